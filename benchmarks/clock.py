"""Trainer callbacks the benchmarks time with (imported by the scripts beside this file)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Wall time of every optimizer step (generation, forward/backward of every micro-step, optimizer)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)


class EpochClock(TrainerCallback):
    """Wall time of every training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)
