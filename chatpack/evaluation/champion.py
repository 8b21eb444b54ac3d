"""The champion rule and the registry aliases it sets.

Rule (non-inferiority): the champion is the fastest model (generated tokens per second over the eval set) among the
reference (the transformers flavour) and the candidates (ONNX builds) that are non-inferior to it. A candidate is
non-inferior when the upper end of the 95% paired-bootstrap interval of (reference quality - candidate quality), over
the same prompts, is at most ``quality_tolerance``. If none qualifies, the reference stays champion and the reason
names the candidate that came closest and by how much. With a registered model name the champion and the challenger
(the reference when a candidate wins, else the closest candidate) are registered (once each) and get the aliases
``champion`` and ``challenger``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient

from chatpack.evaluation.intervals import Interval, paired_gap_interval

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Contender:
    name: str  # "transformers", "onnx", or an ONNX recipe's name in a sweep
    model_uri: str
    quality: float
    tokens_per_s: float
    scores: tuple[float, ...] = ()  # per-prompt row scores, in eval-set order


@dataclass(frozen=True)
class Verdict:
    gap: Interval  # reference quality - candidate quality, with its 95% paired-bootstrap interval
    speedup: float  # candidate tokens/s over the reference's
    non_inferior: bool


@dataclass(frozen=True)
class Decision:
    champion: Contender
    challenger: Contender
    reason: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)


def choose_champion(reference: Contender, candidates: list[Contender], quality_tolerance: float) -> Decision:
    if quality_tolerance < 0:
        raise ValueError(f"quality_tolerance: must be >= 0, got {quality_tolerance}")
    if not candidates:
        raise ValueError("choose_champion: no candidates")
    verdicts = {}
    for c in candidates:
        gap = paired_gap_interval(reference.scores, c.scores)
        speedup = c.tokens_per_s / reference.tokens_per_s if reference.tokens_per_s else float("inf")
        verdicts[c.name] = Verdict(gap, speedup, gap.high <= quality_tolerance)
    qualified = [c for c in candidates if verdicts[c.name].non_inferior]
    tol = f"tolerance {quality_tolerance:g}"
    if not qualified:
        closest = min(candidates, key=lambda c: verdicts[c.name].gap.high)
        v = verdicts[closest.name]
        return Decision(reference, closest, f"no candidate is non-inferior to {reference.name}: the closest, "
                                            f"{closest.name} ({v.speedup:.2f}x faster), has a quality gap of "
                                            f"{v.gap.text()} whose upper end exceeds the {tol} by "
                                            f"{v.gap.high - quality_tolerance:.3f}; {reference.name} stays champion",
                        verdicts)
    fastest = max(qualified, key=lambda c: c.tokens_per_s)
    v = verdicts[fastest.name]
    if fastest.tokens_per_s <= reference.tokens_per_s:
        return Decision(reference, fastest, f"{fastest.name} is non-inferior (quality gap {v.gap.text()}, {tol}) "
                                            f"but not faster ({v.speedup:.2f}x): {reference.name} stays champion",
                        verdicts)
    return Decision(fastest, reference, f"{fastest.name} is {v.speedup:.2f}x faster than {reference.name} and "
                                        f"non-inferior: quality gap {v.gap.text()} (95% paired bootstrap), upper end "
                                        f"{v.gap.high:.3f} <= {tol}", verdicts)


def register_and_alias(decision: Decision, registered_model_name: str) -> dict[str, str]:
    """Register both models under ``registered_model_name`` (reusing versions already registered for the same model)
    and point ``champion``/``challenger`` at them; return alias -> version."""
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
