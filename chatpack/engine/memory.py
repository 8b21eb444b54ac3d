"""How much memory this process may take, the KV rows' budget derived from it, and the rows' layout within it.

The KV rows are address space (:class:`~chatpack.engine.kv_rows.KvRows` maps them lazily): each row spans the
model's whole context, so any request the model takes can join the batch, and the memory actually held follows the
tokens written. What bounds it is a budget in bytes: the batch admits a request while the rows' tokens plus the new
request's fit (:class:`~chatpack.engine.scheduler.Scheduler`), and gives idle rows' memory back first.
"""

from __future__ import annotations

import os
from pathlib import Path

KV_SHARE = 0.5  # of the memory available once the model is loaded: the default KV budget
MIN_ROW_TOKENS = 1024  # fewer rows rather than rows shorter than this


def available_memory() -> int:
    """Bytes this process may still take: the kernel's MemAvailable, capped by the cgroup's limit (containers)."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            available = min(available, int(limit) - usage)
    return available


def kv_budget_bytes(budget_mb: int | None, rows: int, row_bytes: int) -> tuple[int, str]:
    """The KV budget and how it was chosen: ``budget_mb`` when set; else :data:`KV_SHARE` of the memory available
    now, but no more than ``rows`` whole rows need and no less than one whole row (``row_bytes``)."""
    if budget_mb:
        return budget_mb * 2**20, f"kv_cache_mb={budget_mb}"
    available = available_memory()
    budget = min(rows * row_bytes, max(row_bytes, int(available * KV_SHARE)))
    return budget, (f"auto: {KV_SHARE:.0%} of the {available / 2**30:.1f} GiB available at load, within 1-{rows} "
                    f"whole rows of {row_bytes / 2**20:.0f} MB")


def row_layout(rows: int, context_length: int, bytes_per_token: int, budget: int) -> tuple[int, int]:
    """(rows, tokens per row) of the KV cache for a budget of ``budget`` bytes. Where the budget holds one row of
    the model's whole context: ``rows`` such rows (the most requests decoding together; address space, of which the
    batch keeps what is written within the budget). Below that, the old fixed layout: ``rows`` rows as long as each
    holds at least :data:`MIN_ROW_TOKENS`, fewer rows otherwise, each as long as the budget allows (a multiple of
    256), their sum within the budget; requests longer than a row then run alone."""
    if budget >= context_length * bytes_per_token:
        return rows, context_length
    floor = min(context_length, MIN_ROW_TOKENS)
    rows = max(1, min(rows, budget // (floor * bytes_per_token)))
    tokens = min(context_length, budget // (rows * bytes_per_token))
    return rows, tokens if tokens == context_length else max(floor, tokens // 256 * 256)
