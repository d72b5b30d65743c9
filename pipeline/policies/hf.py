"""A local Hugging Face model as a policy: chat template in, `generate`, raw assistant text out (SPEC 4).

The context is rendered with the tokenizer's own chat template (the same rendering the environment
counts tokens with and SFT trains on), so the student sees exactly what it will be trained on. The
blocking generation runs in a worker thread behind a lock: many episodes can await `act` at once,
but one forward pass runs at a time and the event loop stays free for the environments.

Generation. By default (`prefix_cache=True`) through `PrefixCachingGenerator`: the KV cache of every token
prefix already computed is reused across turns and episodes, and `act_batch` decodes many episodes' turns
in one batch (the episode loop calls it once per round). `prefix_cache=False` is HF `generate` on the whole
prompt each turn, one episode at a time (the path it replaces; benchmarks/generation_bench.py compares them).
"""

from __future__ import annotations

import asyncio
import copy
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

from pipeline.policies.base import Action, Message
from pipeline.policies.prefix_cache import PrefixCachingGenerator, SamplingSettings

# Markup the environment parses. Some tokenizers register these as special tokens; they are still
# part of what the model said, so decoding keeps them while dropping <|im_end|>, padding and the like.
KEEP_MARKUP = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def dropped_ids(tokenizer: Any) -> set[int]:
    """The special ids that are not part of what the model said: end of turn, padding and the like."""
    keep = {tokenizer.convert_tokens_to_ids(t) for t in KEEP_MARKUP if t in tokenizer.get_vocab()}
    return set(tokenizer.all_special_ids) - keep


def decode_assistant(tokenizer: Any, token_ids: list[int], drop_ids: set[int]) -> str:
    """The raw assistant text of sampled ids (what the environment parses): markup kept, `drop_ids` dropped."""
    return tokenizer.decode([t for t in token_ids if t not in drop_ids], skip_special_tokens=False)


class HFPolicy:
    """Samples the next assistant message from a local `AutoModelForCausalLM`.

    `temperature == 0` means greedy decoding. With a `seed`, sampling is reproducible and leaves
    torch's global random state untouched.
    """

    def __init__(
        self,
        model_path: str | Path,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        max_new_tokens: int = 1024,
        device: str = "cpu",
        dtype: str | torch.dtype = "auto",
        chat_template_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        prefix_cache: bool = True,
        max_batch_size: int = 32,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"HFPolicy: model directory {path} does not exist (no hub downloads)")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype).to(device)
        self._setup(
            model,
            tokenizer,
            temperature,
            top_p,
            top_k,
            max_new_tokens,
            chat_template_kwargs,
            name or f"hf:{path.name}",
            prefix_cache,
            max_batch_size,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        max_new_tokens: int = 1024,
        chat_template_kwargs: dict[str, Any] | None = None,
        name: str = "hf:model",
        prefix_cache: bool = True,
        max_batch_size: int = 32,
    ) -> HFPolicy:
        """Wrap a model already in memory (e.g. the one being trained) without reloading it."""
        policy = cls.__new__(cls)
        policy._setup(
            model, tokenizer, temperature, top_p, top_k, max_new_tokens, chat_template_kwargs, name, prefix_cache,
            max_batch_size,
        )  # fmt: skip
        return policy

    def _setup(
        self,
        model: Any,
        tokenizer: Any,
        temperature: float,
        top_p: float,
        top_k: int | None,
        max_new_tokens: int,
        chat_template_kwargs: dict[str, Any] | None,
        name: str,
        prefix_cache: bool = True,
        max_batch_size: int = 32,
    ) -> None:
        if temperature < 0:
            raise ValueError(f"HFPolicy: temperature must be >= 0, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"HFPolicy: max_new_tokens must be >= 1, got {max_new_tokens}")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"HFPolicy {name}: the tokenizer has no chat template")
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._drop_ids = dropped_ids(tokenizer)
        self.max_batch_size = max(1, max_batch_size)
        eos = {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))} - {None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.generator = (
            PrefixCachingGenerator(model, pad, sorted(eos), max_entries=2 * self.max_batch_size + 8)
            if prefix_cache
            else None
        )
        self._thread_lock = threading.Lock()
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def act(self, messages: list[Message], tools: list[dict[str, Any]], seed: int | None = None) -> Action:
        """Render the context, sample the next assistant message: its raw text and the sampled ids."""
        return (await self.act_batch([messages], [tools], [seed]))[0]

    async def act_batch(
        self, contexts: list[list[Message]], tools: list[list[dict[str, Any]]], seeds: list[int | None]
    ) -> list[Action]:
        """The next assistant message of every context, generated as one batch (one round of many episodes)."""
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            ids = await asyncio.to_thread(self.generate_batch, contexts, tools, seeds)
        return [Action(self.decode(i), token_ids=list(i)) for i in ids]

    def generate_batch(
        self, contexts: list[list[Message]], tools: list[list[dict[str, Any]]], seeds: list[int | None]
    ) -> list[list[int]]:
        """Blocking: the new token ids of every context, in batches of at most `max_batch_size`."""
        if self.generator is None:
            return [self.generate_token_ids(c, t, s) for c, t, s in zip(contexts, tools, seeds, strict=True)]
        if self.model is None:
            raise RuntimeError(f"HFPolicy {self.name}: used after aclose()")
        prompts = [self._prompt_ids(c, t) for c, t in zip(contexts, tools, strict=True)]
        settings = SamplingSettings(self.max_new_tokens, self.temperature, self.top_p, self.top_k)
        out: list[list[int]] = []
        with self._thread_lock:
            # Room in the pool for every context of this round (and its branches), so that the next round finds
            # each episode's cache: with more episodes in play than one batch holds (eval's concurrency 64, batches
            # of 16), a pool sized for one batch evicted the first batches' caches before their next turn. Its
            # bytes stay bounded (PrefixPool.max_bytes)
            pool = self.generator.pool
            pool.max_entries = max(pool.max_entries, 2 * len(prompts) + 8)
            for start in range(0, len(prompts), self.max_batch_size):
                end = start + self.max_batch_size
                out += self.generator.generate(prompts[start:end], settings, seeds[start:end])
        return out

    def _prompt_ids(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=True,
                **self.chat_template_kwargs,
            )["input_ids"]
        )  # fmt: skip

    def generate_token_ids(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None, seed: int | None = None
    ) -> list[int]:
        """Blocking: the new token ids (at most `max_new_tokens`, eos included if reached)."""
        if self.model is None:
            raise RuntimeError(f"HFPolicy {self.name}: used after aclose()")
        if self.generator is not None:
            return self.generate_batch([messages], [tools or []], [seed])[0]
        inputs = self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            **self.chat_template_kwargs,
        ).to(self.model.device)
        config = self._generation_config()
        with self._thread_lock, torch.inference_mode():
            if seed is None:
                output = self.model.generate(**inputs, generation_config=config)
            else:
                # fork_rng restores the global state afterwards: a seeded episode does not shift the
                # random stream of anything else running in the process.
                devices = [self.model.device] if self.model.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices, device_type=self.model.device.type):
                    torch.manual_seed(seed)
                    output = self.model.generate(**inputs, generation_config=config)
        return output[0, inputs["input_ids"].shape[1] :].tolist()

    def decode(self, token_ids: list[int]) -> str:
        """Text of the generated ids, keeping tool-call/think markup and dropping end and pad tokens."""
        return decode_assistant(self.tokenizer, token_ids, self._drop_ids)

    def _generation_config(self) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        if self.temperature == 0:
            config.do_sample = False
            # Unset sampling knobs a model's own generation_config may carry, so greedy is plain greedy.
            config.temperature, config.top_p, config.top_k = None, None, None
        else:
            config.do_sample = True
            config.temperature = self.temperature
            config.top_p = self.top_p
            config.top_k = self.top_k or 0  # 0 disables top-k
        return config

    async def aclose(self) -> None:
        """Drop the model so its memory can be freed."""
        self.model = None
        if self.generator is not None:
            self.generator.clear()
            self.generator.model = None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
