"""Sizes people write (``16GiB``, ``512m``), the machine's memory and cores: what settings are made of."""

from __future__ import annotations

import os
import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return 8 * 1024**3


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def default_budget() -> int:
    """Three quarters of the machine's RAM: room for the OS, the daemon and the page cache."""
    return machine_memory() * 3 // 4


def parse_size(text: str | int | None) -> int | None:
    """``"16GiB"``, ``"8 GB"``, ``"512m"`` or a number of bytes; empty means the default."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 16GiB, 8GB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
