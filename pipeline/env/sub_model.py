"""The RLM's sub-model, as the environment sees it: an async policy run for a synchronous caller.

The environment never builds the policy (it imports nothing from pipeline.policies): the caller does
(`pipeline.policies.factory.sub_policy_for`, one shared runner per distinct sub-model spec) and passes
it to `make_env(..., sub_policy=...)`. A bare policy object passed instead gets a runner of its own
that lives as long as the episode.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class SubCallResult:
    text: str | None
    error: str | None
    seconds: float


class SubModelRunner:
    """Runs an async policy on a private event loop in its own thread, for synchronous callers.

    `env.step` runs in a worker thread while the rollout's event loop plays other episodes; the
    sub-policy's coroutines run here instead, so a batch is concurrent (bounded by a semaphore) and
    the caller just blocks until the batch is done.
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlm-sub-model", daemon=True)
        self.thread.start()

    def run_batch(self, prompts: list[str], max_parallel: int, timeout: float, seed: int) -> list[SubCallResult]:
        future = asyncio.run_coroutine_threadsafe(self._batch(prompts, max_parallel, timeout, seed), self.loop)
        return future.result()

    async def _batch(self, prompts: list[str], max_parallel: int, timeout: float, seed: int) -> list[SubCallResult]:
        semaphore = asyncio.Semaphore(max_parallel)

        async def one(index: int, prompt: str) -> SubCallResult:
            async with semaphore:
                started = time.monotonic()
                try:
                    messages = [{"role": "user", "content": prompt}]
                    reply = await asyncio.wait_for(self.policy.act(messages, [], seed=seed + index), timeout)
                    text = getattr(reply, "text", reply)  # a policy may answer with an Action (policies/base.py)
                    return SubCallResult(str(text), None, time.monotonic() - started)
                except Exception as exc:  # a failed call is a reply the model sees, never a crash
                    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    return SubCallResult(None, detail, time.monotonic() - started)

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    def close(self, close_policy: bool = True) -> None:
        """Stop the loop (and release the policy unless someone else owns it)."""
        if self.loop.is_closed():
            return
        try:
            if close_policy:
                asyncio.run_coroutine_threadsafe(self.policy.aclose(), self.loop).result(timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()
