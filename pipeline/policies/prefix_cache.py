"""Batched generation that reuses the KV cache of every token prefix it has already computed (HF models).

Between context edits an episode's context only grows: the next turn's prompt is the previous prompt, the
tokens the model just sampled, and the new tool results. Recomputing that whole prefix every turn (what
`model.generate` does) costs a full prefill per turn; on a CPU that is most of an episode's time. Like
vLLM's automatic prefix caching, this keeps the keys and values of recently processed sequences, matched
by token ids (never by text or by episode), and computes only what follows the longest cached prefix: a
new episode reuses the shared system prompt and tool schemas of another, an edit (deleteContext, a
re-rendered notebook) falls back to the prefix before the edit.

One round of generation for a batch of prompts:
1. each prompt is matched against the pool and its uncached tokens (all but the last) are prefilled alone;
2. the caches are left-padded to one length and every sequence decodes in one batch (position ids and the
   attention mask say where each row's tokens are, so padding changes nothing but float rounding); once a quarter
   of the rows have ended their turn, they leave the batch (on a CPU a row costs about the same per step whether
   it still samples or only pads, and one turn's length varies from a 20-token tool call to a 100-token note);
3. each row's cache, cut to the tokens it really holds (prompt + sampled tokens), goes back to the pool.

Sampling follows HF's warpers (temperature, top-k, top-p); each row samples with its own seeded generator,
so a seeded episode samples the same tokens whatever else shares its batch (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pipeline.policies.memory import return_freed_memory

# The pool's default memory bound. The demo's eval (64 SmolLM2 episodes in play, bf16) needs ~2-3 GB for the live
# episodes' sequences; without a bound on bytes, the sequences episodes left behind filled a 24 GB machine (killed).
DEFAULT_POOL_BYTES = 4 * 2**30


@dataclass
class CachedSequence:
    """Token ids and the keys/values computed for them: per layer (keys, values), each [1, heads, len, dim]."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@dataclass
class SamplingSettings:
    """What a generation round samples with; temperature 0 is greedy."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None

    def warpers(self) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if self.temperature > 0:
            if self.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                warpers.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


def causal_mask(length: int, past: int, device: torch.device) -> torch.Tensor:
    """The 4D boolean mask (True: attend) of `length` new tokens after `past` cached ones: each token sees the
    whole past and the new tokens up to itself. Handed to the model ready-made, so that transformers does not build
    one itself (slow on a CPU)."""
    keys = torch.arange(past + length, device=device)
    queries = torch.arange(past, past + length, device=device)
    return (keys[None, :] <= queries[:, None])[None, None]


class PreallocatedLayer(DynamicLayer):
    """A cache layer whose keys and values live in one buffer sized for the whole round, written in place.

    `DynamicLayer` concatenates at every decoding step, copying the whole cache each time: on a CPU, at a batch of
    32 contexts of 1,500 tokens, that copy is most of a step. Here each step writes one position, and the rows of
    finished sequences can be dropped (`keep_rows`)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.buffer_keys, self.buffer_values, self.length = keys, values, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.buffer_keys[:, :, self.length : end] = key_states
        self.buffer_values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.buffer_keys[:, :, :end], self.buffer_values[:, :, :end]
        return self.keys, self.values

    def keep_rows(self, index: torch.Tensor) -> None:
        """Only the batch rows in `index`, in that order (a copy of theirs: the others' memory is freed)."""
        self.buffer_keys = self.buffer_keys.index_select(0, index)
        self.buffer_values = self.buffer_values.index_select(0, index)
        self.keys, self.values = self.buffer_keys[:, :, : self.length], self.buffer_values[:, :, : self.length]


class PrefixPool:
    """Recently computed sequences, matched by their longest common token prefix with a new prompt.

    Bounded by a count and by the bytes their keys and values hold, the oldest evicted first: a live episode's
    sequence is taken and put back every round, so what ages out is the sequences episodes left behind (the
    context before an edit, finished episodes)."""

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: list[CachedSequence] = []
        self.nbytes = 0  # held by the entries
        self.hits = self.misses = 0  # tokens reused / tokens computed, for the benchmark and logs

    def take(self, ids: Sequence[int]) -> CachedSequence | None:
        """The cached prefix of `ids` (at most all but its last token), or None. A sequence that `ids` extends
        whole is handed over (its owner is continuing); a partial match is copied, the original stays."""
        target = np.asarray(ids[:-1], dtype=np.int64)
        best, best_length = -1, 0
        for position, entry in enumerate(self.entries):
            n = min(len(entry.ids), len(target))
            if n <= best_length:
                continue
            same = np.asarray(entry.ids[:n], dtype=np.int64) == target[:n]
            length = n if same.all() else int(same.argmin())
            if length > best_length:
                best, best_length = position, length
        if best < 0:
            return None
        entry = self.entries[best]
        if best_length == len(entry.ids):
            self.nbytes -= entry.nbytes
            return self.entries.pop(best)
        return CachedSequence(entry.ids[:best_length], [(k[:, :, :best_length], v[:, :, :best_length]) for k, v in
                                                        entry.layers])  # fmt: skip

    def put(self, entry: CachedSequence) -> None:
        self.entries.append(entry)
        self.nbytes += entry.nbytes
        while len(self.entries) > self.max_entries or (self.max_bytes is not None and self.nbytes > self.max_bytes):
            self.nbytes -= self.entries.pop(0).nbytes  # oldest first

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


class PrefixCachingGenerator:
    """Generates one completion per prompt for a batch of prompts, reusing cached prefixes across calls.

    Call `clear()` whenever the model's weights change (a training step): cached keys and values belong to the
    weights that computed them.
    """

    def __init__(
        self,
        model: Any,
        pad_token_id: int,
        eos_token_ids: Sequence[int],
        max_entries: int = 64,
        max_bytes: int | None = DEFAULT_POOL_BYTES,
    ) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_token_ids = set(eos_token_ids)
        self.pool = PrefixPool(max_entries, max_bytes)

    def clear(self) -> None:
        self.pool.clear()

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, seeds: Sequence[int | None] | None = None
    ) -> list[list[int]]:
        """The sampled ids of each prompt (at most `max_new_tokens`, the EOS included when reached)."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("PrefixCachingGenerator: empty prompt")
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        cached = [self._prefill(list(p)) for p in prompts]
        outputs = self._decode(prompts, cached, settings, seeds)
        del cached
        return_freed_memory()
        return outputs

    def _prefill(self, ids: list[int]) -> CachedSequence:
        """Keys and values of all but the last prompt token, computing only what the pool does not hold."""
        entry = self.pool.take(ids)
        start = 0 if entry is None else len(entry.ids)
        self.pool.hits += start
        new = ids[start:-1]
        self.pool.misses += len(new) + 1  # the last prompt token is computed in the decode batch
        if not new:
            return entry or CachedSequence([], [])
        device = self.model.device
        cache = DynamicCache(ddp_cache_data=entry.layers) if entry and entry.layers else DynamicCache()
        positions = torch.arange(start, len(ids) - 1, device=device)[None]
        self.model(
            input_ids=torch.tensor([new], device=device),
            attention_mask=causal_mask(len(new), start, device),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return CachedSequence(ids[:-1], [(layer.keys, layer.values) for layer in cache.layers])

    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        cached: list[CachedSequence],
        settings: SamplingSettings,
        seeds: list[int | None],
    ) -> list[list[int]]:
        device, batch = self.model.device, len(prompts)
        width = max(len(c.ids) for c in cached)
        pads = [width - len(c.ids) for c in cached]
        cache = self._batched_cache(cached, pads, width, settings.max_new_tokens)
        # a ready 4D mask (True: attend): transformers then skips building one per step, which on a CPU costs
        # more than the step itself at a batch of 32 (measured 2.5x per decoding step)
        mask = torch.zeros(batch, 1, 1, width + settings.max_new_tokens, dtype=torch.bool, device=device)
        for row, pad in enumerate(pads):
            mask[row, :, :, pad:] = True
        tokens = torch.tensor([[p[-1]] for p in prompts], device=device)
        positions = torch.tensor([[len(p) - 1] for p in prompts], device=device)
        generators = [None if s is None else torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        warpers = settings.warpers()
        outputs: list[list[int]] = [[] for _ in prompts]
        live = list(range(batch))  # the prompt of each row of the batch
        done = [False] * batch  # per row of the batch
        for step in range(settings.max_new_tokens):
            logits = (
                self.model(
                    input_ids=tokens,
                    attention_mask=mask[..., : width + step + 1],
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
                .logits[:, -1, :]
                .float()
            )
            chosen = self._sample(logits, warpers, settings.temperature, [generators[p] for p in live])
            for row, token in enumerate(chosen):
                if not done[row]:
                    outputs[live[row]].append(token)
                    done[row] = token in self.eos_token_ids
            if all(done):
                break
            if sum(done) >= max(1, len(live) // 4):
                # A finished row would decode padding until the last row ends, and on a CPU each row costs about
                # the same per step: hand the finished rows' caches to the pool and go on without them
                keep = [row for row, d in enumerate(done) if not d]
                self._store(cache, prompts, pads, width, outputs, [(row, live[row]) for row, d in enumerate(done) if d])
                mask, positions, chosen = self._keep_rows(cache, keep, mask, positions, chosen)
                live, done = [live[row] for row in keep], [False] * len(keep)
            tokens = torch.tensor([[self.pad_token_id if d else t] for d, t in zip(done, chosen, strict=True)],
                                  device=device)  # fmt: skip
            positions = positions + 1
        self._store(cache, prompts, pads, width, outputs, list(enumerate(live)))
        return outputs

    @staticmethod
    def _keep_rows(
        cache: DynamicCache, keep: list[int], mask: torch.Tensor, positions: torch.Tensor, chosen: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The batch cut to the rows in `keep` (the cache in place; the mask, positions and last tokens returned)."""
        index = torch.tensor(keep, device=mask.device)
        for layer in cache.layers:
            layer.keep_rows(index)
        return mask.index_select(0, index), positions.index_select(0, index), [chosen[row] for row in keep]

    def _batched_cache(self, cached: list[CachedSequence], pads: list[int], width: int, room: int) -> DynamicCache:
        """One cache for the batch: each row's prefix right-aligned at `width`, with `room` positions to decode."""
        n_layers = max(len(c.layers) for c in cached)
        if n_layers == 0:
            return DynamicCache()
        layers = []
        for layer in range(n_layers):
            k0, _ = next(c.layers[layer] for c in cached if c.layers)
            shape = (len(cached), k0.shape[1], width + room, k0.shape[3])
            keys, values = k0.new_zeros(shape), k0.new_zeros(shape)
            for row, (entry, pad) in enumerate(zip(cached, pads, strict=True)):
                if entry.layers:
                    k, v = entry.layers[layer]
                    keys[row, :, pad:width] = k[0]
                    values[row, :, pad:width] = v[0]
            layers.append(PreallocatedLayer(keys, values, width))
        cache = DynamicCache()
        cache.layers = layers
        return cache

    @staticmethod
    def _sample(logits: torch.Tensor, warpers: LogitsProcessorList, temperature: float, generators: list) -> list[int]:
        if temperature == 0:
            return logits.argmax(dim=-1).tolist()
        scores = warpers(None, logits)
        probs = torch.softmax(scores, dim=-1)
        return [int(torch.multinomial(probs[row], 1, generator=g).item()) for row, g in enumerate(generators)]

    def _store(
        self,
        cache: DynamicCache,
        prompts: Sequence[Sequence[int]],
        pads: list[int],
        width: int,
        outputs: list[list[int]],
        rows: list[tuple[int, int]],
    ) -> None:
        """Into the pool, for each (batch row, prompt) of `rows`: the prompt and every sampled token but the last
        (never fed back)."""
        for row, prompt in rows:
            sampled = outputs[prompt]
            end = width + len(sampled)  # prompt[:-1] fills [pad, width); then prompt[-1] and sampled[:-1]
            pad = pads[prompt]
            layers = [(layer.keys[row : row + 1, :, pad:end].clone(), layer.values[row : row + 1, :, pad:end].clone())
                      for layer in cache.layers]  # fmt: skip
            self.pool.put(CachedSequence([*prompts[prompt], *sampled[:-1]], layers))
