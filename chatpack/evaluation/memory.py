"""Peak memory of this process."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    ``/proc/self/status`` VmHWM belongs to this process's own address space; ``ru_maxrss`` is not used on Linux
    because it survives ``exec`` and so reports the parent's peak for a freshly spawned child.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS reports bytes, Linux KB
