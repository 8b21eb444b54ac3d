"""The champion rule and the registry aliases it sets.

Rule: the faster flavour (higher generated tokens per second over the eval set) wins, unless its quality score is
lower than the other flavour's by more than ``quality_tolerance`` (absolute, on the 0-1 quality score); then the
slower, better one wins. With a registered model name both models are registered (once each) and get the aliases
``champion`` and ``challenger``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Contender:
    name: str  # "transformers" | "onnx"
    model_uri: str
    quality: float
    tokens_per_s: float


@dataclass(frozen=True)
class Decision:
    champion: Contender
    challenger: Contender
    reason: str


def choose_champion(a: Contender, b: Contender, quality_tolerance: float) -> Decision:
    if quality_tolerance < 0:
        raise ValueError(f"quality_tolerance: must be >= 0, got {quality_tolerance}")
    fast, slow = (a, b) if a.tokens_per_s >= b.tokens_per_s else (b, a)
    speedup = fast.tokens_per_s / slow.tokens_per_s if slow.tokens_per_s else float("inf")
    gap = slow.quality - fast.quality
    if gap > quality_tolerance:
        return Decision(slow, fast, f"{fast.name} is {speedup:.2f}x faster but its quality is {gap:.3f} lower "
                                    f"(> tolerance {quality_tolerance:g}): {slow.name} wins")
    return Decision(fast, slow, f"{fast.name} is {speedup:.2f}x faster and its quality is within "
                                f"{quality_tolerance:g} of {slow.name} ({fast.quality:.3f} vs {slow.quality:.3f})")


def register_and_alias(decision: Decision, registered_model_name: str) -> dict[str, str]:
    """Register both models under ``registered_model_name`` (reusing versions already registered for the same model)
    and point ``champion``/``challenger`` at them; return alias -> version."""
    import mlflow

    client = MlflowClient()
    versions = {}
    for alias, contender in ((CHAMPION, decision.champion), (CHALLENGER, decision.challenger)):
        model_id = contender.model_uri.removeprefix("models:/")
        existing = [v for v in client.search_model_versions(f"name = '{registered_model_name}'")
                    if v.source == contender.model_uri or model_id in (v.source or "")]
        if existing:
            version = existing[0].version
        else:
            version = mlflow.register_model(contender.model_uri, registered_model_name).version
        client.set_registered_model_alias(registered_model_name, alias, str(version))
        client.set_model_version_tag(registered_model_name, str(version), "chatpack.flavour", contender.name)
        versions[alias] = str(version)
        logger.info("models:/%s@%s -> version %s (%s)", registered_model_name, alias, version, contender.name)
    return versions
