#!/usr/bin/env bash
# GRPO on one node: TRL's vLLM server on some GPUs, accelerate launch of pipeline.grpo on the others.
#
#   launch/grpo.sh <model> [recipe] [accelerate-config] [-- flags for pipeline.grpo]
#   launch/grpo.sh qwen3-8b                          # recipes/qwen3-8b/grpo.yaml: GPUs 0-3 serve, 4-7 train (ZeRO-3)
#   VLLM_GPUS=2 launch/grpo.sh qwen3-4b grpo zero3 -- --tasks_per_generation 6
#   launch/grpo.sh tiny grpo cpu_zero2 -- --max_steps 2   # no GPU: HF generate in the trainer, no server
#
# With GPUs and a recipe with `use_vllm: true`, the first VLLM_GPUS GPUs (default: half of them) run
# `trl vllm-serve` for the recipe's model_name_or_path (tensor parallel VLLM_TP, default 1; data parallel over the
# rest), on port VLLM_PORT (default 8000); the other GPUs train and reach it on 127.0.0.1. The trainer waits for
# the server (vllm_server_timeout) and syncs its weights after every step; the server is stopped when training
# ends. Episodes per step (tasks_per_generation x num_episodes_per_task) must divide over the training GPUs.
# Rerunning the same command resumes from the last complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '4,7p' "$0" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
model=$1; shift
recipe=grpo; accel=""
if [[ $# -gt 0 && $1 != -- ]]; then recipe=$1; shift; fi
if [[ $# -gt 0 && $1 != -- ]]; then accel=$1; shift; fi
[[ $# -gt 0 && $1 == -- ]] && shift

recipe_file=recipes/$model/$recipe.yaml
[[ -f $recipe_file ]] || { echo "no recipe $recipe_file" >&2; exit 2; }
python=python
if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; fi
# The server's window is the recipe's context budget (prompt + output, environment.max_context_tokens)
read -r use_vllm served_model max_model_len < <("$python" -c '
import sys, yaml
r = yaml.safe_load(open(sys.argv[1]))
budget = (r.get("environment") or {}).get("max_context_tokens", 32000)
print(str(bool(r.get("use_vllm"))).lower(), r["model_name_or_path"], budget)' "$recipe_file")

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
[[ -n $accel ]] || { if (( gpus == 0 )); then accel=cpu_zero2; else accel=zero3; fi; }
# A bf16 recipe (every GPU recipe) cannot train here without a GPU: say so now, in one line, rather than
# after every process has loaded TRL (unless the flags after -- set bf16 or use_cpu themselves).
if (( gpus == 0 )) && grep -Eq '^bf16: *true' "$recipe_file" && ! grep -Eq '^use_cpu: *true' "$recipe_file" \
    && [[ " $* " != *" --bf16"* && " $* " != *" --use_cpu"* ]]; then
    echo "grpo: $recipe_file trains in bf16 on GPUs and no GPU is visible (nvidia-smi); on a CPU: launch/grpo.sh tiny" >&2
    exit 1
fi
accel_file=recipes/accelerate/$accel.yaml
[[ -f $accel_file ]] || { echo "no accelerate config $accel_file" >&2; exit 2; }

bin() { if command -v "$1" >/dev/null 2>&1; then echo "$1"; elif [[ -x .venv/bin/$1 ]]; then echo ".venv/bin/$1"; else echo "$1"; fi; }
launch_flags=(--config_file "$accel_file")
grpo_flags=()
if (( gpus > 0 )) && [[ $use_vllm == true ]]; then
    vllm_gpus=${VLLM_GPUS:-$((gpus / 2))}; tp=${VLLM_TP:-1}; port=${VLLM_PORT:-8000}
    (( vllm_gpus >= 1 && vllm_gpus < gpus && vllm_gpus % tp == 0 )) || {
        echo "VLLM_GPUS=$vllm_gpus must be a multiple of VLLM_TP=$tp and leave GPUs to train (of $gpus)" >&2; exit 2; }
    serve_ids=$(seq -s, 0 $((vllm_gpus - 1)))
    train_ids=$(seq -s, "$vllm_gpus" $((gpus - 1)))
    mkdir -p runs/logs
    log=runs/logs/vllm-serve-$model-$$.log
    echo "grpo: serving $served_model on GPUs $serve_ids (tp $tp) at :$port, log $log" >&2
    CUDA_VISIBLE_DEVICES=$serve_ids "$(bin trl)" vllm-serve --model "$served_model" \
        --tensor_parallel_size "$tp" --data_parallel_size $((vllm_gpus / tp)) --port "$port" \
        --max_model_len "$max_model_len" --enable_prefix_caching true >"$log" 2>&1 &
    server_pid=$!
    trap 'kill "$server_pid" 2>/dev/null || true' EXIT
    export CUDA_VISIBLE_DEVICES=$train_ids
    launch_flags+=(--num_processes $((gpus - vllm_gpus)))
    grpo_flags+=(--vllm_server_host 127.0.0.1 --vllm_server_port "$port")
elif (( gpus > 0 )); then
    launch_flags+=(--num_processes "$gpus")
else
    export DS_ACCELERATOR=cpu  # DeepSpeed on its CPU accelerator (gloo), no GPU probing (tiny recipe: HF generate)
fi
export ACCELERATE_LOG_LEVEL=${ACCELERATE_LOG_LEVEL:-info}
export TRL_EXPERIMENTAL_SILENCE=${TRL_EXPERIMENTAL_SILENCE:-1}

echo "grpo: $recipe_file on $accel_file ($gpus GPUs)" >&2
# Not exec: the EXIT trap stops the server afterwards
"$(bin accelerate)" launch "${launch_flags[@]}" -m pipeline.grpo --config "$recipe_file" "${grpo_flags[@]}" "$@"
