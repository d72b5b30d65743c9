"""Freed heap pages go back to the system (pipeline/policies/memory.py), as a generation round needs on glibc."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from pipeline.policies.memory import _MALLOC_TRIM, return_freed_memory


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(_MALLOC_TRIM is None, reason="glibc only")
def test_pages_a_worker_thread_freed_are_returned():
    kept: list[torch.Tensor] = []

    def one_round() -> None:
        # what a decoding round does in its worker thread: large caches freed, smaller survivors between them.
        # Freeing one 30 MB block first raises glibc's mmap threshold, as the rounds' big caches do: blocks under
        # it then come from the thread's heap, not from mmap (which would be unmapped at once)
        first = torch.ones(30 * 2**20 // 4)
        del first
        big = []
        for _ in range(400):  # 400 x 2 MB, touched
            big.append(torch.ones(2 * 2**20 // 4))
            kept.append(torch.ones(256))
        del big

    thread = threading.Thread(target=one_round)
    thread.start()
    thread.join()
    held = _rss_mb()
    assert return_freed_memory()
    assert held - _rss_mb() > 400  # most of the 800 MB the round freed
