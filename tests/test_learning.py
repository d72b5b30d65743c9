"""SFT teaches: a few steps on SmolLM2 (the demo's student, its CPU settings) raise its per-turn imitation of the
expert on held-out episodes by at least 30 points. Fails if the completion mask, the end-of-turn training, the
chat template or the CPU levers (top layers only, bf16 autocast where the CPU has it natively) stop SFT from
teaching."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

from pipeline.data.segments import segment_trajectory
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.play.imitation import imitation_figures
from pipeline.policies.scripted import ScriptedExpert
from pipeline.settings.cpu_bf16 import cpu_bf16_is_native
from pipeline.tasks.generators import generate_niah

pytestmark = pytest.mark.slow  # ~2 minutes: 12 SFT steps on a 135M-parameter model
# bf16 autocast where the CPU has it natively (as the demo decides); emulated it is ~20x slower than float32
BF16 = str(cpu_bf16_is_native()).lower()
SFT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "sft.yaml"


def expert_episodes(tokenizer, seed: int, n: int, templates: str):
    config = EnvConfig(max_context_tokens=8192, max_output_tokens=160, max_rounds=24, compact_prompts=True)
    expert, episodes = ScriptedExpert(chunk_size=256), []
    for task in generate_niah(n, 400, 900, seed=seed, tokenizer=tokenizer, templates=templates):
        env = PensieveEnv.from_task(task, tokenizer, config)
        while not env.done:
            env.step(expert.decide(env.messages()))
        episodes.append(env.trajectory(task.id, task.id, "scripted", seed, True))
    return episodes


def test_a_few_sft_steps_teach_the_loop(smollm2_dir: Path, tmp_path: Path) -> None:
    from pipeline.sft import build_trainer, make_parser

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    train = expert_episodes(tokenizer, seed=0, n=6, templates="train")
    heldout = expert_episodes(tokenizer, seed=100, n=2, templates="heldout")
    rows = [s.to_row() for traj in train for s in segment_trajectory(tokenizer, traj)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "data"))

    before = imitation_figures(AutoModelForCausalLM.from_pretrained(smollm2_dir), tokenizer, heldout)
    flags = [
        "--config", str(SFT_RECIPE), "--model_name_or_path", str(smollm2_dir), "--dataset_path",
        str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--max_length", "8192",
        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--max_steps", "12",
        "--learning_rate", "2e-4", "--warmup_steps", "1", "--lr_scheduler_type", "constant", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--trainable_layers", "12", "--bf16", BF16,
        "--use_cpu", "true", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    trainer, _ = build_trainer(*make_parser().parse_args_and_config(flags))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    after = imitation_figures(trainer.model, tokenizer, heldout)
    assert after["exact_turn_rate"] >= before["exact_turn_rate"] + 0.30, (before, after)
