#!/usr/bin/env bash
# SFT on one node: accelerate launch of pipeline.sft with a recipe and an accelerate config.
#
#   launch/sft.sh <model> [recipe] [accelerate-config] [-- flags for pipeline.sft]
#   launch/sft.sh qwen3-8b                       # recipes/qwen3-8b/sft.yaml, ZeRO-3 on all GPUs
#   launch/sft.sh qwen3-8b sft_lora              # LoRA, ZeRO-2
#   launch/sft.sh tiny sft cpu_zero2 -- --max_steps 4
#
# <model> is a folder of recipes/, [recipe] a YAML in it without .yaml (default sft), and the
# accelerate config a YAML of recipes/accelerate/ (default: cpu_zero2 without a GPU; zero2 for LoRA
# recipes and zero3 otherwise, intellect-3 always zero3). On GPUs the process count is the number of
# visible GPUs. Rerunning the same command resumes from the last complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '4,8p' "$0" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
model=$1; shift
recipe=sft; accel=""
if [[ $# -gt 0 && $1 != -- ]]; then recipe=$1; shift; fi
if [[ $# -gt 0 && $1 != -- ]]; then accel=$1; shift; fi
[[ $# -gt 0 && $1 == -- ]] && shift

recipe_file=recipes/$model/$recipe.yaml
[[ -f $recipe_file ]] || { echo "no recipe $recipe_file" >&2; exit 2; }

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
if [[ -z $accel ]]; then
    if (( gpus == 0 )); then accel=cpu_zero2
    elif [[ $recipe == *lora* && $model != intellect-3 ]]; then accel=zero2
    else accel=zero3; fi
fi
# A bf16 recipe (every GPU recipe) cannot train here without a GPU: say so now, in one line, rather than
# after every process has loaded TRL (unless the flags after -- set bf16 or use_cpu themselves).
if (( gpus == 0 )) && grep -Eq '^bf16: *true' "$recipe_file" && ! grep -Eq '^use_cpu: *true' "$recipe_file" \
    && [[ " $* " != *" --bf16"* && " $* " != *" --use_cpu"* ]]; then
    echo "sft: $recipe_file trains in bf16 on GPUs and no GPU is visible (nvidia-smi); on a CPU: launch/sft.sh tiny sft cpu_zero2 -- --max_steps 4" >&2
    exit 1
fi
accel_file=recipes/accelerate/$accel.yaml
[[ -f $accel_file ]] || { echo "no accelerate config $accel_file" >&2; exit 2; }

launch_flags=(--config_file "$accel_file")
if (( gpus > 0 )); then
    launch_flags+=(--num_processes "$gpus")
else
    export DS_ACCELERATOR=cpu  # DeepSpeed on its CPU accelerator (gloo), no GPU probing
fi
export ACCELERATE_LOG_LEVEL=${ACCELERATE_LOG_LEVEL:-info}
accelerate=accelerate
if ! command -v accelerate >/dev/null 2>&1 && [[ -x .venv/bin/accelerate ]]; then accelerate=.venv/bin/accelerate; fi

echo "sft: $recipe_file on $accel_file ($gpus GPUs)" >&2
exec "$accelerate" launch "${launch_flags[@]}" -m pipeline.sft --config "$recipe_file" "$@"
