"""How many compute threads a server should use: the machine's physical cores (hyper-threads share a core's
arithmetic units; a decode step is memory-bound, and more threads than cores only add contention)."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores (the default thread count of every engine); logical CPUs when that cannot be read."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
        if cores:
            return int(cores)
    except ImportError:
        pass
    seen = set()
    try:
        physical_id = core_id = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical_id = value.strip()
            elif key == "core id":
                core_id = value.strip()
            elif not line.strip() and core_id is not None:
                seen.add((physical_id, core_id))
                physical_id = core_id = None
        if core_id is not None:
            seen.add((physical_id, core_id))
    except OSError:
        pass
    return len(seen) or os.cpu_count() or 1
