"""Where a shared-prefix row's training time goes: one forward+backward of a packed row vs its separate segment rows.

segments_bench.py times whole SFT epochs; this looks inside one step with `torch.profiler`, to say which part
of the model the packing saves (the matrix products run on each prefix token once) and which it cannot
(the tree's attention is exactly the attention of the separate rows: each branch is one causal sdpa call over
[prefix; segment]). Random token ids with the demo's shape by default: a 1,100-token prefix (system prompt,
tool schemas, task) and three 560-token segment rests; bf16 autocast over fp32 weights, every layer trained.

    python benchmarks/shared_prefix_step_bench.py --model runs/demo/model --threads 2

Prints, per variant, the median wall time of `--repeats` steps after a warm-up, and the profiler's attention
and matmul self time of one step; the last line reads
`step time shared-prefix/separate <r> (tokens <t>; attention <a> of the shared step)`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import profile
from transformers import AutoModelForCausalLM

from pipeline.training.shared_prefix_attention import NAME, TREE

ATTENTION_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward")


def steps(model, prefix: int, segments: list[int], seed: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """The packed step and the separate-rows step over the same tokens and the same trained positions."""
    ids = torch.randint(100, model.config.vocab_size - 100, (1, prefix + sum(segments)),
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    positions = torch.cat([torch.arange(prefix)] + [torch.arange(prefix, prefix + s) for s in segments])[None]
    labels = ids.clone()
    labels[:, :prefix] = -100

    def shared() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tree = [(prefix, segments, ids.shape[1])]
            loss = model(input_ids=ids, position_ids=positions, labels=labels, **{TREE: tree}).loss
        loss.backward()

    def separate() -> None:
        start = prefix
        for size in segments:
            row = torch.cat([ids[:, :prefix], ids[:, start : start + size]], dim=1)
            row_labels = row.clone()
            row_labels[:, :prefix] = -100
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=row, labels=row_labels).loss
            loss.backward()
            start += size

    return shared, separate


def timed(model, step: Callable[[], None], repeats: int) -> float:
    """Median seconds of one step (gradients zeroed outside the timing), after one warm-up step."""
    times = []
    for k in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        step()
        if k:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def self_times(model, step: Callable[[], None]) -> dict[str, float]:
    """Profiler self time (s) of one step: attention (forward+backward), matrix products, everything."""
    model.zero_grad(set_to_none=True)
    with profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    attention = sum(e.self_cpu_time_total for e in events if e.key.removeprefix("aten::") in ATTENTION_OPS) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::bmm", "aten::addmm")) / 1e6
    return {"attention": attention, "matmul": matmul, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/demo/model")
    parser.add_argument("--prefix", type=int, default=1100)
    parser.add_argument("--segments", type=int, nargs="+", default=[560, 560, 560])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation=NAME, dtype=torch.float32).train()
    shared, separate = steps(model, args.prefix, args.segments, args.seed)
    tokens = {"shared": args.prefix + sum(args.segments), "separate": sum(args.prefix + s for s in args.segments)}
    wall, parts = {}, {}
    for name, step in (("shared", shared), ("separate", separate)):
        wall[name] = timed(model, step, args.repeats)
        parts[name] = self_times(model, step)
        t = parts[name]
        print(f"{name:8s} {tokens[name]:6d} tokens  step {wall[name]:6.2f} s  profiler: attention "
              f"{t['attention']:.2f} s, matmul {t['matmul']:.2f} s of {t['total']:.2f} s")  # fmt: skip
    share = parts["shared"]["attention"] / parts["shared"]["total"]
    ratio, token_ratio = wall["shared"] / wall["separate"], tokens["shared"] / tokens["separate"]
    print(f"step time shared-prefix/separate {ratio:.3f} (tokens {token_ratio:.3f}; "
          f"attention {share:.2f} of the shared step)")  # fmt: skip


if __name__ == "__main__":
    main()
