"""Freed memory back to the system: glibc keeps what a thread's heap freed, and a long generation leaves a lot.

A local model's generation round allocates and frees tens of MB per layer (batch caches sized by the longest
context) in the worker threads the episode loop runs it in. glibc gives each such thread its own heap (arena) and
keeps the pages freed there for reuse; across rounds of different sizes they pile up. In the demo's eval the
process grew to 19 GB, 13 GB of which were free heap pages (`malloc_trim(0)` handed them back at once), and an
earlier run was killed by the kernel at 24 GB on a 24 GB machine.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any


def _glibc_malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where the C library is another (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def return_freed_memory() -> bool:
    """Hand the pages that freed tensors left in glibc's heaps back to the system (`malloc_trim(0)`, every
    arena); whether it could. Called after every `PrefixCachingGenerator.generate` (one batch of a round, which
    takes seconds; this takes milliseconds)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
