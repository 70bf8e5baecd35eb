"""Give freed activations back to the OS at once (glibc), so peak RSS follows the engine's own peak.

glibc serves big allocations with mmap only above a threshold that grows, after each free, up to
32 MB; below it, freed arrays stay in the heap and RSS keeps the high-water mark of a fragmented
arena. Pinning the threshold at 1 MiB (which also stops the growth) makes every activation its
own mapping, unmapped when the engine drops it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def release_memory_eagerly(threshold: int = 1 << 20) -> bool:
    """Once per process; False where there is no glibc (the engine works the same, with more RSS)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, threshold) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
