"""One batched decoding step of the student: a 2D padding mask (the stock path) vs a ready 4D mask (ours).

Given a 2D mask, transformers builds the 4D attention mask itself at every step; on a CPU at a batch of 32 that
costs more than the step's matmuls. `PrefixCachingGenerator` hands the model the 4D boolean mask it already has.
Both variants decode the same rows from the same preallocated cache; the logits must agree.

    python benchmarks/decode_mask_bench.py --model runs/demo/sft --batch 32 --context 1500 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from pipeline.policies.prefix_cache import PreallocatedLayer


def random_cache(model, batch: int, context: int, room: int, seed: int) -> DynamicCache:
    """A cache of `context` positions per row (random keys and values: only the time is measured here)."""
    config = model.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, context + room, dim)
    cache = DynamicCache()

    def buffer() -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(model.dtype)

    cache.layers = [PreallocatedLayer(buffer(), buffer(), context) for _ in range(config.num_hidden_layers)]
    return cache


@torch.inference_mode()
def time_steps(model, batch: int, context: int, steps: int, four_d: bool) -> tuple[list[float], torch.Tensor]:
    cache = random_cache(model, batch, context, steps, seed=0)
    mask = torch.ones(batch, context + steps, dtype=torch.long)
    mask[: batch // 2, : context // 10] = 0  # half the rows left-padded, as in a batch of unequal contexts
    tokens = torch.zeros(batch, 1, dtype=torch.long)
    times, logits = [], None
    for step in range(steps):
        seen = mask[:, : context + step + 1]
        attention = seen.bool()[:, None, None, :] if four_d else seen
        started = time.perf_counter()
        logits = model(input_ids=tokens, attention_mask=attention, position_ids=torch.full((batch, 1), context + step),
                       past_key_values=cache, use_cache=True).logits  # fmt: skip
        times.append(time.perf_counter() - started)
    return times, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    results = {}
    for name, four_d in (("2d padding mask", False), ("ready 4d mask", True)):
        times, logits = time_steps(model, args.batch, args.context, args.steps, four_d)
        results[name] = (sorted(times[1:])[len(times[1:]) // 2], logits)  # median, the first step warms up
        print(f"{name}: {results[name][0]:.3f} s per decoding step (batch {args.batch}, {args.context} tokens)")
    (before, a), (after, b) = results.values()
    print(f"max logit difference {(a.float() - b.float()).abs().max().item():.3g}")
    print(f"decode step: 2d {before:.3f} s, 4d {after:.3f} s, ratio {before / after:.2f}x")


if __name__ == "__main__":
    main()
