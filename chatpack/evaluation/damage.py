"""The damage report: what quantisation did to the model, teacher-forced on the shipped corpus.

Both models read the same token windows (:mod:`chatpack.evaluation.corpus`); at every position they predict the next
token. Against the reference (the transformers model, loaded the way the transformers flavour loads it) the ONNX
build gets:

- perplexity of each (``damage_ppl_reference``, ``damage_ppl_onnx``) on the corpus's own next tokens;
- KL divergence KL(reference || onnx) per token, its mean and 99th percentile (``damage_kld_mean``,
  ``damage_kld_p99``), and per genre (``damage_kld_mean_<genre>``);
- top-1 agreement: the share of positions where both put the same token first (``damage_top1_agreement``).

This is llama.cpp's ``llama-perplexity --kl-divergence`` method, over the full vocabulary. The reference pass runs
once per (weights, corpus, settings) and is cached as what its logits are made from: the hidden state entering the
output layer at each position and that layer's weights (MBs, not a vocabulary of floats per token); each build then
costs one prefill per window (``generator.get_output("logits")``) plus one output-layer product.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from chatpack.evaluation.corpus import DEFAULT_CORPUS, GENRES, Window, corpus_sha256, cut_windows, load_corpus
from chatpack.sources.cache import cache_key, cache_root, write_json_atomic

logger = logging.getLogger(__name__)

DAMAGE_VERSION = 1  # bump when the computation changes: cached reports are keyed by it
REPORT_ARTIFACT = "damage_report.json"
METRIC_PREFIX = "damage_"


@dataclass(frozen=True)
class DamageSettings:
    tokens: int = 4096  # scored tokens taken from the corpus, genres interleaved; 0 = the whole corpus
    window: int = 512  # tokens per teacher-forced window (capped by the model's context)
    corpus: str = ""  # a corpus JSONL; empty = data/damage_corpus.jsonl

    def check(self) -> None:
        if self.tokens < 0:
            raise ValueError(f"damage_tokens: must be >= 0 (0 = the whole corpus), got {self.tokens}")
        if not Path(self.corpus_path).is_file():
            raise ValueError(f"corpus: {self.corpus_path} does not exist")

    @property
    def corpus_path(self) -> Path:
        return Path(self.corpus) if self.corpus else DEFAULT_CORPUS


def _log_softmax(logits: Any) -> Any:
    import torch

    return torch.log_softmax(torch.as_tensor(logits).float(), dim=-1)


def reference_pass(hf_dir: Path, windows: list[Window]) -> dict[str, Any]:
    """Run the reference over the windows; keep what its logits are made from: the hidden state that enters the
    output layer at every scored position, and that layer's weights (a few MB instead of a vocabulary per token)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    head = model.get_output_embeddings()
    captured: list[Any] = []
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append((inputs[0][0], output[0])))
    hidden = []
    with torch.inference_mode():
        for w in tqdm(windows, desc="damage: reference", unit="window"):
            logits = model(torch.tensor([w.ids])).logits[0]
            states, head_out = captured.pop()
            if not torch.equal(logits, head_out):
                raise ValueError(f"damage report: {type(model).__name__} transforms its logits after the output "
                                 "layer (scaling or soft-capping); the damage report does not support it")
            hidden.append(states[:-1].clone())
    hook.remove()
    return {"hidden": torch.cat(hidden), "weight": head.weight.detach().clone(),
            "bias": None if head.bias is None else head.bias.detach().clone()}


def candidate_pass(onnx_dir: Path, windows: list[Window], ref: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per scored position: both models' NLL of the corpus token and argmax, and KL(reference || onnx)."""
    import onnxruntime_genai as og
    import torch

    model = og.Model(str(onnx_dir))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("nll_ref", "nll", "argmax_ref", "argmax", "kld")}
    offset = 0
    with torch.inference_mode():
        for w in tqdm(windows, desc="damage: onnx", unit="window"):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(w.ids))
            generator = og.Generator(model, params)
            generator.append_tokens(np.asarray(w.ids, dtype=np.int32))
            logq = _log_softmax(np.asarray(generator.get_output("logits"))[0, :-1])
            del generator
            n = w.scored
            logp = _log_softmax(torch.nn.functional.linear(ref["hidden"][offset:offset + n], ref["weight"],
                                                           ref["bias"]))
            vocab = min(logp.shape[-1], logq.shape[-1])  # a build may pad the vocabulary
            logp, logq = logp[:, :vocab], logq[:, :vocab]
            target = torch.tensor(w.ids[1:])[:, None]
            out["nll_ref"].append(-logp.gather(1, target)[:, 0].numpy())
            out["nll"].append(-logq.gather(1, target)[:, 0].numpy())
            out["argmax_ref"].append(logp.argmax(dim=-1).numpy())
            out["argmax"].append(logq.argmax(dim=-1).numpy())
            out["kld"].append((logp.exp() * (logp - logq)).sum(-1).clamp_min(0).numpy())
            offset += n
    return {k: np.concatenate(v) for k, v in out.items()}


def summarise(cand: dict[str, np.ndarray], windows: list[Window]) -> dict[str, float]:
    """The report's metrics from the per-position arrays of :func:`candidate_pass`."""
    genres = np.concatenate([np.full(w.scored, w.genre, dtype=object) for w in windows])
    kld = cand["kld"].astype(np.float64)
    metrics = {
        "ppl_reference": float(np.exp(cand["nll_ref"].astype(np.float64).mean())),
        "ppl_onnx": float(np.exp(cand["nll"].astype(np.float64).mean())),
        "kld_mean": float(kld.mean()),
        "kld_p99": float(np.percentile(kld, 99)),
        "kld_max": float(kld.max()),
        "top1_agreement": float((cand["argmax_ref"] == cand["argmax"]).mean()),
        "tokens": float(len(kld)),
    }
    metrics["ppl_ratio"] = metrics["ppl_onnx"] / metrics["ppl_reference"]
    for genre in GENRES:
        if (genres == genre).any():
            metrics[f"kld_mean_{genre}"] = float(kld[genres == genre].mean())
    return {METRIC_PREFIX + k: v for k, v in metrics.items()}


def damage_report(hf_dir: Path, onnx_dir: Path, settings: DamageSettings, reference_key: dict[str, Any],
                  onnx_key: str) -> dict[str, Any]:
    """The damage report of the ONNX build in ``onnx_dir`` against the transformers model in ``hf_dir``.

    ``reference_key`` identifies the reference weights (source, revision, weight hashes), ``onnx_key`` the build;
    both passes are cached under them (the report as JSON, the reference's hidden states as ``.pt``).
    """
    import importlib.metadata

    import torch

    settings.check()
    versions = {n: importlib.metadata.version(n) for n in ("transformers", "torch", "onnxruntime-genai")}
    corpus_sha = corpus_sha256(settings.corpus_path)
    window = min(settings.window, _context_length(onnx_dir))
    ref_parts = {**reference_key, "corpus": corpus_sha, "tokens": settings.tokens, "window": window,
                 "transformers": versions["transformers"], "torch": versions["torch"],
                 "damage_version": DAMAGE_VERSION}
    folder = cache_root() / "damage"
    report_path = folder / f"{cache_key({**ref_parts, 'onnx': onnx_key, 'genai': versions['onnxruntime-genai']})}.json"
    if report_path.is_file():
        logger.info("Damage report cache hit: %s", report_path)
        report = json.loads(report_path.read_text())
        return {**report, "metrics": {**report["metrics"], "damage_cache_hit": 1.0}}
    windows = _windows(hf_dir, settings, window)
    ref_path = folder / f"ref-{cache_key(ref_parts)}.pt"
    start = time.perf_counter()
    if ref_path.is_file():
        ref = torch.load(ref_path)
    else:
        ref = reference_pass(hf_dir, windows)
        _save_atomic(ref_path, ref)
    seconds_ref = time.perf_counter() - start
    start = time.perf_counter()
    cand = candidate_pass(onnx_dir, windows, ref)
    seconds_onnx = time.perf_counter() - start
    metrics = summarise(cand, windows)
    metrics.update(damage_seconds_reference=seconds_ref, damage_seconds_onnx=seconds_onnx)
    report = {"metrics": metrics, "settings": {**asdict(settings), "window": window},
              "corpus_sha256": corpus_sha, "corpus": settings.corpus_path.name,
              "reference": "transformers model as the transformers flavour loads it (checkpoint dtype)",
              "versions": versions, "windows": len(windows)}
    write_json_atomic(report_path, report)
    logger.info("Damage: ppl %.2f -> %.2f, KLD mean %.4f p99 %.4f, top-1 %.3f (%d tokens, %.0f s)",
                metrics["damage_ppl_reference"], metrics["damage_ppl_onnx"], metrics["damage_kld_mean"],
                metrics["damage_kld_p99"], metrics["damage_top1_agreement"], metrics["damage_tokens"],
                seconds_ref + seconds_onnx)
    return {**report, "metrics": {**metrics, "damage_cache_hit": 0.0}}


def _windows(hf_dir: Path, settings: DamageSettings, window: int) -> list[Window]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    tokenizer.model_max_length = 10**9  # whole documents are encoded, then cut into windows: no length warning
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return cut_windows(load_corpus(settings.corpus_path), encode, window, settings.tokens)


def _context_length(onnx_dir: Path) -> int:
    config = json.loads((Path(onnx_dir) / "genai_config.json").read_text())
    return int(config["model"].get("context_length", 4096))


def _save_atomic(path: Path, tensors: dict[str, Any]) -> None:
    """``torch.save`` atomically: a reader never sees half a file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(tensors, tmp)
    os.replace(tmp, path)


def fetch_damage(info: dict[str, Any], hf_dir: Path, onnx_dir: Path, settings: DamageSettings) -> dict[str, Any]:
    """The damage report of a fetch result (``chatpack.sources.fetch.FetchResult``'s info and folders): the reference
    is keyed by the source, its resolved revision and weight hashes, the build by its ONNX cache entry."""
    reference_key = {"source": [info["source_kind"], info["source"]], "revision": info["revision_resolved"],
                     "weights": info["weights_sha256"]}
    return damage_report(hf_dir, onnx_dir, settings, reference_key, Path(onnx_dir).name)


def model_metrics(fetch_info: dict[str, Any]) -> dict[str, float]:
    """The damage metrics recorded in a fetch run's ``fetch_info.json`` (empty when it made no report)."""
    return dict((fetch_info.get("damage") or {}).get("metrics") or {})
