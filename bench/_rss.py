"""Peak-memory helpers shared by the benchmarks (Linux ``/proc``; None elsewhere)."""

from __future__ import annotations


def proc_status_kb(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> int | None:
    """Reset the kernel's peak-RSS counter to the current RSS; returns the current RSS in kB, or
    None where the counter cannot be reset (then peak memory is "not measured")."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return None
    return proc_status_kb("VmRSS")
