"""Whether bfloat16 is fast on this CPU, and the demo's recipes rewritten to float32 where it is not.

bf16 autocast on a CPU pays only where the CPU computes bfloat16 natively (AVX512-BF16 or AMX on x86; the
machine the demo's recipes were tuned on had AVX512-BF16: ~2x faster than float32). Elsewhere oneDNN emulates
it: on an AVX2-only EPYC (2 threads) one forward+backward pass of SmolLM2-135M over 512 tokens took 136.9 s in
bf16 against 6.65 s in float32 (20x slower), and the demo's SFT step went from ~9 s to ~340 s. The demo's
recipes ask for bf16 (`bf16: true` with `use_cpu: true`, `dtype: bfloat16` for the HF policies); on such a CPU
the demo writes them with float32 instead and says so, and a user's own CPU recipe with bf16 gets a warning.
"""

from __future__ import annotations

import platform
from typing import Any

import torch


def cpu_bf16_is_native() -> bool:
    """True where this CPU computes bfloat16 matrix products in hardware (x86: AVX512-BF16 or AMX tiles)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        # torch.cpu's cpuinfo probes (private, so read defensively: missing means "not known to be native")
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # aarch64 and others: oneDNN's own answer


def float32_where_bf16_is_slow(recipe: dict[str, Any], native: bool | None = None) -> list[str]:
    """Turn a CPU recipe's bf16 settings to float32 in place when bf16 is not native here; the changed fields.

    Touches only what runs on the CPU: a training recipe's `bf16` and GRPO's `generation_dtype: bfloat16` when it
    also says `use_cpu`, and the `dtype: bfloat16` of local HF policies (`models.<name>` of an eval recipe,
    `policy` of a collect recipe).
    """
    if native if native is not None else cpu_bf16_is_native():
        return []
    changed = []
    if recipe.get("bf16") and recipe.get("use_cpu"):
        recipe["bf16"] = False
        changed.append("bf16")
    if recipe.get("generation_dtype") == "bfloat16" and recipe.get("use_cpu"):
        recipe["generation_dtype"] = None  # GRPO then plays with its float32 training weights
        changed.append("generation_dtype")
    policies = {f"models.{k}": v for k, v in (recipe.get("models") or {}).items()}
    if isinstance(recipe.get("policy"), dict):
        policies["policy"] = recipe["policy"]
    for name, spec in policies.items():
        if isinstance(spec, dict) and spec.get("kind") == "hf" and spec.get("dtype") == "bfloat16":
            spec["dtype"] = "float32"
            changed.append(f"{name}.dtype")
    return changed
