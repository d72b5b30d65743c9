"""SFT stage (pipeline/sft.py): loss only on masked-in tokens; DeepSpeed ZeRO-2/3 and LoRA on 2 CPU
processes; a killed run resumes to the same per-step losses; the final model loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from datasets import Dataset

from pipeline.data.sft_data import SFTDataError, load_sft_dataset
from pipeline.sft import build_trainer, make_parser
from pipeline.training.checkpoints import last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
RECIPE = ROOT / "recipes/tiny/sft.yaml"


def make_rows(n_rows: int, vocab: int, seed: int = 0) -> list[dict]:
    """Segments shaped like curated ones: context tokens (mask 0), then two assistant turns (mask 1) with a
    tool result (mask 0) between them. The assistant turns repeat the start of the row, so a model can learn."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n_rows):
        context = torch.randint(10, vocab, (int(torch.randint(12, 40, (1,), generator=g)),), generator=g).tolist()
        turn = context[:8]
        tool = torch.randint(10, vocab, (6,), generator=g).tolist()
        ids = context + turn + tool + turn
        mask = [0] * len(context) + [1] * len(turn) + [0] * len(tool) + [1] * len(turn)
        rows.append({"input_ids": ids, "completion_mask": mask, "episode_id": f"ep{i}", "turns": [0, 1]})
    return rows


@pytest.fixture(scope="module")
def sft_dataset(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_model_dir).vocab_size
    path = tmp_path_factory.mktemp("sft") / "data"
    rows = make_rows(48, min(vocab, 2000))
    rows.append({"input_ids": [11, 12, 13], "completion_mask": [0, 0, 0], "episode_id": "idle", "turns": [0]})
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def parse(*args: str):
    return make_parser().parse_args_and_config(["--config", str(RECIPE), *args])


# (a) the completion mask is honoured ----------------------------------------------------------------


def test_loss_is_masked_cross_entropy(tiny_model_dir, sft_dataset, tmp_path):
    script_args, training_args, model_args = parse(
        "--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(sft_dataset),
        "--output_dir", str(tmp_path / "out"),
    )  # fmt: skip
    trainer, data_report = build_trainer(script_args, training_args, model_args)
    assert data_report["rows"] == 49
    assert len(trainer.train_dataset) == 48, "a row with nothing to train is dropped"
    assert "episode_id" not in trainer.train_dataset.column_names

    raw = load_sft_dataset(str(sft_dataset))
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    model = trainer.model.eval()
    with torch.no_grad():
        trainer_loss = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    # By hand, from the raw completion_mask: token t is trained iff mask[t] == 1, predicted from position t-1
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    masked_sum, masked_n, all_sum, all_n = 0.0, 0, 0.0, 0
    for row, ids, mask in zip(range(4), raw["input_ids"][:4], raw["completion_mask"][:4], strict=True):
        for t in range(1, len(ids)):
            nll = -log_probs[row, t - 1, ids[t]].item()
            all_sum, all_n = all_sum + nll, all_n + 1
            if mask[t]:
                masked_sum, masked_n = masked_sum + nll, masked_n + 1
    assert trainer_loss == pytest.approx(masked_sum / masked_n, rel=1e-5)
    assert abs(trainer_loss - all_sum / all_n) > 1e-3, "the unmasked loss must differ, or the test proves nothing"


def test_completion_only_loss_false_is_refused(tiny_model_dir, sft_dataset, tmp_path):
    args = parse(
        "--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(sft_dataset),
        "--output_dir", str(tmp_path / "out"), "--completion_only_loss", "false",
    )  # fmt: skip
    with pytest.raises(ValueError, match="completion_only_loss"):
        build_trainer(*args)


def test_bad_rows_name_the_row(tmp_path):
    path = tmp_path / "bad"
    Dataset.from_list([{"input_ids": [1, 2, 3], "completion_mask": [0, 1, 1]}] * 2 + [
        {"input_ids": [1, 2, 3], "completion_mask": [0, 1]}
    ]).save_to_disk(str(path))  # fmt: skip
    with pytest.raises(SFTDataError, match="row 2: completion_mask has 2 entries, input_ids has 3"):
        load_sft_dataset(str(path))
    Dataset.from_list([{"input_ids": [1, 2], "completion_mask": [0, 1]}] * 3 + [
        {"input_ids": [1, 2], "completion_mask": [1, 2]}
    ]).save_to_disk(str(tmp_path / "values"))  # fmt: skip
    with pytest.raises(SFTDataError, match="row 3: completion_mask has value 2"):
        load_sft_dataset(str(tmp_path / "values"))
    with pytest.raises(SFTDataError, match="not a dataset saved with"):
        load_sft_dataset(str(tmp_path / "missing"))


def test_last_complete_checkpoint_skips_a_partial_save(tmp_path):
    for step, complete in [(2, True), (10, True), (12, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert last_complete_checkpoint(str(tmp_path / "nothing")) is None


# (b, c, d) accelerate launch, 2 CPU processes ---------------------------------------------------------


def launch_command(accelerate_config: str, output_dir: Path, model: Path, data: Path, *flags: str) -> list[str]:
    return [
        str(ACCELERATE), "launch", "--config_file", str(ROOT / "recipes/accelerate" / accelerate_config),
        "-m", "pipeline.sft", "--config", str(RECIPE),
        "--model_name_or_path", str(model), "--dataset_path", str(data), "--output_dir", str(output_dir),
        *flags,
    ]  # fmt: skip


def launch(cmd: list[str], kill_when: Path | None = None) -> int:
    """Run the command; with kill_when, SIGKILL it and all its processes as soon as that file exists."""
    # PYTHONFAULTHANDLER: a rank that crashes prints its Python stack into the log
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    log = Path(cmd[cmd.index("--output_dir") + 1]).with_suffix(".log")
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while kill_when is not None and proc.poll() is None:
            if kill_when.exists():
                # torchrun starts each worker in its own session: kill the whole tree, not just the launcher
                tree = psutil.Process(proc.pid).children(recursive=True)
                for p in [psutil.Process(proc.pid), *tree]:
                    p.kill()
                break
            time.sleep(0.01)
        returncode = proc.wait(timeout=600)
    if kill_when is None and returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {returncode}:\n{log.read_text()[-6000:]}")
    return returncode


def losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def assert_same_losses_after(resumed: Path, reference: Path, step: int, max_steps: int) -> None:
    expected, got = losses(reference), losses(resumed)
    assert sorted(expected) == list(range(1, max_steps + 1))
    tail = range(step + 1, max_steps + 1)
    assert [got[s] for s in tail] == pytest.approx([expected[s] for s in tail], rel=0, abs=1e-6)


def assert_loads_and_trained(output_dir: Path, base: Path) -> None:
    """The final save loads with the Auto class (a LoRA save through its adapter_config) and is trained."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(output_dir, output_loading_info=True)
    assert not any(info.values()), f"{output_dir}: incomplete weights {info}"  # e.g. an empty ZeRO-3 save
    ids = torch.tensor([[11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        trained = model(ids).logits
        initial = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert trained.shape == initial.shape
    assert not torch.allclose(trained, initial), "the saved model is the untrained one"
    card = (output_dir / "README.md").read_text()
    assert f"Base model: `{base}`" in card and "Recipe: `" in card and "Data: `" in card
    assert f"Model Card for {output_dir.name}" in card  # the model is named (not "Model Card for None")


@pytest.mark.slow
def test_zero2_killed_run_resumes_to_the_same_losses(tiny_model_dir, sft_dataset, tmp_path):
    # 16 steps of 4 rows over 48 rows: the run crosses two epoch boundaries (reshuffles)
    flags = ("--max_steps", "16", "--save_steps", "2", "--save_total_limit", "2")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    launch(launch_command("cpu_zero2.yaml", whole, tiny_model_dir, sft_dataset, *flags))

    cmd = launch_command("cpu_zero2.yaml", killed, tiny_model_dir, sft_dataset, *flags)
    assert launch(cmd, kill_when=killed / "checkpoint-2" / "trainer_state.json") != 0
    assert not (killed / "report.json").exists(), "the kill came too late to test anything"
    launch(cmd)  # same command: picks up the last complete checkpoint

    report = json.loads((killed / "report.json").read_text())
    resumed_step = int(report["resumed_from"].rsplit("-", 1)[1])
    assert 2 <= resumed_step < 16 and report["world_size"] == 2 and report["global_step"] == 16
    assert_same_losses_after(killed, whole, resumed_step, 16)
    assert losses(whole)[16] < losses(whole)[1] - 0.5, "the model should learn the repeated turns"
    assert_loads_and_trained(whole, tiny_model_dir)

    # Running a finished stage again changes nothing (Trainer alone would train a 17th step)
    launch([sys.executable, *cmd[cmd.index("-m") :]])
    assert json.loads((killed / "report.json").read_text()) == report


@pytest.mark.slow
@pytest.mark.parametrize(
    ("accelerate_config", "extra"),
    [("cpu_zero3.yaml", ()), ("cpu_zero2.yaml", ("--use_peft", "--lora_r", "8", "--lora_alpha", "16"))],
    ids=["zero3", "lora"],
)
def test_resume_and_final_model(accelerate_config, extra, tiny_model_dir, sft_dataset, tmp_path):
    flags = ("--max_steps", "4", "--save_steps", "2", *extra)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    launch(launch_command(accelerate_config, whole, tiny_model_dir, sft_dataset, *flags))
    # What a kill right after the first checkpoint leaves on disk
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    launch(launch_command(accelerate_config, resumed, tiny_model_dir, sft_dataset, *flags))

    assert json.loads((resumed / "report.json").read_text())["resumed_from"] == str(resumed / "checkpoint-2")
    assert_same_losses_after(resumed, whole, 2, 4)
    if extra:
        assert (whole / "adapter_model.safetensors").exists() and not (whole / "model.safetensors").exists()
    assert_loads_and_trained(whole, tiny_model_dir)


# Recipes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/sft*.yaml")))
def test_recipe_parses(recipe):
    # bf16 off: the check for it wants a GPU; everything else is as the recipe says
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(ROOT / recipe), "--bf16", "false"]
    )
    assert script_args.dataset_path and training_args.output_dir and model_args.model_name_or_path
    assert training_args.save_strategy == "steps" and training_args.lr_scheduler_type == "cosine"
    assert not training_args.packing
    assert model_args.use_peft == recipe.endswith("_lora.yaml")
    if Path(recipe).parent.name not in ("tiny", "demo"):  # the GPU recipes (the demo's are the CPU's)
        assert training_args.max_length == 32768 and training_args.activation_checkpointing
        assert model_args.dtype == "bfloat16"
        assert training_args.learning_rate == (1e-4 if model_args.use_peft else 1e-5)
