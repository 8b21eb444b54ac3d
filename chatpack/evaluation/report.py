"""The evaluation's human-facing outputs: a summary table, a comparison plot (PNG) and a markdown report. Quality
scores are shown with their 95% bootstrap intervals."""

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
    ("loadavg_1m", "machine load average while timed", ".1f"),
]


def _cell(summary: dict[str, float], key: str, fmt: str) -> str:
    text = format(summary.get(key, float("nan")), fmt)
    if f"{key}_ci_low" in summary:
        text += f" [{summary[key + '_ci_low']:{fmt}}, {summary[key + '_ci_high']:{fmt}}]"
    return text


def summary_markdown(summaries: dict[str, dict[str, float]]) -> str:
    names = list(summaries)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label, fmt in SUMMARY_ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(summaries[n], key, fmt) for n in names) + " |")
    return "\n".join(lines)


def comparison_plot(summaries: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    panels = [("quality_score", "quality score (95% CI)"), ("tokens_per_s", "generated tokens/s"),
              ("latency_p50_s", "latency p50 (s)"), ("model_size_mb", "model size (MB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4, 1.2 * len(names)) * len(panels), 3.8))
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(names))]
    for ax, (key, title) in zip(axes, panels):
        values = [summaries[n][key] for n in names]
        errors = None
        if f"{key}_ci_low" in summaries[names[0]]:
            errors = [[v - summaries[n][f"{key}_ci_low"] for n, v in zip(names, values)],
                      [summaries[n][f"{key}_ci_high"] - v for n, v in zip(names, values)]]
        bars = ax.bar(names, values, color=colours, yerr=errors, capsize=4)
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30 if len(names) > 2 else 0)
    fig.suptitle("the transformers reference and the ONNX models on the same prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_markdown(summaries: dict[str, dict[str, float]], agreements: dict[str, dict[str, float]], decision: Any,
                    aliases: dict[str, str], registered_model_name: str, n_rows: int, eval_data: str,
                    quality_tolerance: float) -> str:
    lines = [
        "# Model comparison",
        "",
        f"{n_rows} prompts from `{eval_data}`, greedy decoding, each model in its own process. Quality scores with "
        "their 95% bootstrap intervals.",
        "",
        summary_markdown(summaries),
        "",
        "## Non-inferiority to the reference (what each ONNX model costs in quality)",
        "",
        f"Gap = reference quality - candidate quality on the same prompts, 95% paired-bootstrap interval; a candidate "
        f"is non-inferior when the interval's upper end is <= the tolerance {quality_tolerance:g}.",
        "",
        "| model | quality gap [95% CI] | non-inferior | speed vs reference | identical replies | ROUGE-L vs ref. |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in decision.verdicts.items():
        agree = agreements[name]
        lines.append(f"| {name} | {v.gap.text()} | {'yes' if v.non_inferior else 'no'} | {v.speedup:.2f}x | "
                     f"{agree['agreement_identical']:.1%} | {agree['agreement_rouge_l']:.3f} |")
    lines += ["", "## Champion", "",
              f"**{decision.champion.name}** (`{decision.champion.model_uri}`): {decision.reason}."]
    if aliases:
        lines += ["", f"Registered as `{registered_model_name}`: `@champion` = version {aliases['champion']}, "
                      f"`@challenger` = version {aliases['challenger']}. Load it with "
                      f"`mlflow.pyfunc.load_model(\"models:/{registered_model_name}@champion\")`."]
    return "\n".join(lines) + "\n"
