"""The sweep's summary: one row per model (the reference and each ONNX build) with size, speed, damage and quality,
the Pareto front of speed against damage, and a plot of it.

Damage comes from each ONNX LoggedModel's ``damage_*`` metrics (the fetch run's damage report, copied there by
``log_onnx_pyfunc``); the reference's row has its own perplexity and no divergence from itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow

REFERENCE_DAMAGE = {"damage_kld_mean": 0.0, "damage_kld_p99": 0.0, "damage_top1_agreement": 1.0}


def logged_damage(model_uri: str) -> dict[str, float]:
    """The ``damage_*`` metrics on a LoggedModel (empty when it has none or the URI is not a LoggedModel)."""
    if not model_uri.startswith("models:/m-"):
        return {}
    model = mlflow.get_logged_model(model_uri.removeprefix("models:/"))
    return {m.key: m.value for m in model.metrics or [] if m.key.startswith("damage_")}


def sweep_rows(summaries: dict[str, dict[str, float]], damage: dict[str, dict[str, float]], verdicts: dict[str, Any],
               reference: str, champion: str) -> list[dict[str, Any]]:
    """One row per model, in evaluation order, with the Pareto flag (speed vs mean KL divergence)."""
    ref_ppl = next((d["damage_ppl_reference"] for d in damage.values() if "damage_ppl_reference" in d), math.nan)
    rows = []
    for name, s in summaries.items():
        d = {**REFERENCE_DAMAGE, "damage_ppl_onnx": ref_ppl} if name == reference else damage.get(name, {})
        v = verdicts.get(name)
        rows.append({
            "model": name, "size_mb": s["model_size_mb"], "decode_tokens_per_s": s["decode_tokens_per_s"],
            "tokens_per_s": s["tokens_per_s"], "ppl": d.get("damage_ppl_onnx", math.nan),
            "kld_mean": d.get("damage_kld_mean", math.nan), "kld_p99": d.get("damage_kld_p99", math.nan),
            "top1_agreement": d.get("damage_top1_agreement", math.nan), "quality": s["quality_score"],
            "quality_ci": [s["quality_score_ci_low"], s["quality_score_ci_high"]],
            "gap": None if v is None else v.gap.value, "gap_ci": None if v is None else [v.gap.low, v.gap.high],
            "non_inferior": True if v is None else v.non_inferior, "champion": name == champion,
        })
    for row in rows:
        row["pareto"] = is_pareto(row, rows)
    return rows


def is_pareto(row: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """No other model is at least as fast and at most as damaged, and strictly better in one of the two."""
    if math.isnan(row["kld_mean"]):
        return False
    for other in rows:
        if other is row or math.isnan(other["kld_mean"]):
            continue
        if (other["tokens_per_s"] >= row["tokens_per_s"] and other["kld_mean"] <= row["kld_mean"]
                and (other["tokens_per_s"] > row["tokens_per_s"] or other["kld_mean"] < row["kld_mean"])):
            return False
    return True


def _num(value: float, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | size MB | decode tok/s | generated tok/s | PPL | mean KLD | p99 KLD | top-1 | quality [95% CI] "
             "| gap vs reference [95% CI] | non-inferior | Pareto | champion |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = "-" if r["gap"] is None else f"{r['gap']:.3f} [{r['gap_ci'][0]:.3f}, {r['gap_ci'][1]:.3f}]"
        lines.append(
            f"| {r['model']} | {_num(r['size_mb'], '.1f')} | {_num(r['decode_tokens_per_s'], '.1f')} | "
            f"{_num(r['tokens_per_s'], '.1f')} | {_num(r['ppl'], '.2f')} | {_num(r['kld_mean'], '.4f')} | "
            f"{_num(r['kld_p99'], '.3f')} | {_num(r['top1_agreement'], '.3f')} | {r['quality']:.3f} "
            f"[{r['quality_ci'][0]:.3f}, {r['quality_ci'][1]:.3f}] | {gap} | {'yes' if r['non_inferior'] else 'no'} "
            f"| {'yes' if r['pareto'] else ''} | {'**yes**' if r['champion'] else ''} |")
    return "\n".join(lines)


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Generated tokens/s against mean KL divergence; the Pareto front joined, the champion ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if math.isnan(r["kld_mean"]):
            continue
        colour = "#2ca02c" if r["non_inferior"] else "#d62728"
        ax.scatter(r["kld_mean"], r["tokens_per_s"], s=40 + r["size_mb"] / 3, color=colour, alpha=0.8,
                   edgecolors="black" if r["champion"] else "none", linewidths=2)
        ax.annotate(r["model"], (r["kld_mean"], r["tokens_per_s"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["kld_mean"])
    if len(front) > 1:
        ax.plot([r["kld_mean"] for r in front], [r["tokens_per_s"] for r in front], "--", color="grey")
    ax.set_xlabel("mean per-token KL divergence vs the reference (nats)")
    ax.set_ylabel("generated tokens/s")
    ax.set_title("speed vs damage (green: non-inferior quality; ringed: champion; size ~ marker)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
