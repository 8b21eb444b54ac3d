"""The evaluation's human-facing outputs: a summary table, a comparison plot (PNG) and a markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUMMARY_ROWS = [
    ("quality_score", "quality score (0-1)", ".3f"),
    ("contains_reference", "contains reference", ".3f"),
    ("exact_match", "exact match", ".3f"),
    ("rouge_l", "ROUGE-L", ".3f"),
    ("rule_pass", "rule checks passed", ".3f"),
    ("tokens_per_s", "generated tokens/s", ".1f"),
    ("decode_tokens_per_s", "decode tokens/s (median)", ".1f"),
    ("ttft_p50_s", "time to first token p50 (s)", ".3f"),
    ("latency_p50_s", "latency p50 (s)", ".3f"),
    ("latency_p95_s", "latency p95 (s)", ".3f"),
    ("completion_tokens_mean", "reply tokens (mean)", ".1f"),
    ("peak_rss_mb", "peak RSS (MB)", ".0f"),
    ("model_size_mb", "model size on disk (MB)", ".1f"),
    ("load_s", "load time (s)", ".2f"),
]


def summary_markdown(summaries: dict[str, dict[str, float]]) -> str:
    names = list(summaries)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label, fmt in SUMMARY_ROWS:
        lines.append(f"| {label} | " + " | ".join(format(summaries[n].get(key, float('nan')), fmt) for n in names)
                     + " |")
    return "\n".join(lines)


def comparison_plot(summaries: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    panels = [("quality_score", "quality score"), ("tokens_per_s", "generated tokens/s"),
              ("latency_p50_s", "latency p50 (s)"), ("model_size_mb", "model size (MB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (key, title) in zip(axes, panels):
        values = [summaries[n][key] for n in names]
        bars = ax.bar(names, values, color=["#4C72B0", "#DD8452"][: len(names)])
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(title)
    fig.suptitle("transformers vs onnxruntime-genai on the same prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_markdown(summaries: dict[str, dict[str, float]], agreement: dict[str, float], decision: Any,
                    aliases: dict[str, str], registered_model_name: str, n_rows: int, eval_data: str) -> str:
    lines = [
        "# Flavour comparison",
        "",
        f"{n_rows} prompts from `{eval_data}`, greedy decoding, each flavour in its own process.",
        "",
        summary_markdown(summaries),
        "",
        "## Agreement between the flavours (what the ONNX form costs in quality)",
        "",
        f"- identical replies: {agreement['agreement_identical']:.1%}",
        f"- mean ROUGE-L between the two replies: {agreement['agreement_rouge_l']:.3f}",
        "",
        "## Champion",
        "",
        f"**{decision.champion.name}** (`{decision.champion.model_uri}`): {decision.reason}.",
    ]
    if aliases:
        lines += ["", f"Registered as `{registered_model_name}`: `@champion` = version {aliases['champion']}, "
                      f"`@challenger` = version {aliases['challenger']}. Load it with "
                      f"`mlflow.pyfunc.load_model(\"models:/{registered_model_name}@champion\")`."]
    return "\n".join(lines) + "\n"
