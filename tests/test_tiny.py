"""The tiny model (SPEC 8) loads and behaves like a real Qwen3: Auto classes, Qwen3's added tokens and
chat template, tool calls that round-trip through our parser, lossless text, deterministic builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.env.parsing import format_assistant_text, parse_tool_calls
from pipeline.env.tools import TOOL_NAMES, tool_schemas
from pipeline.models.tiny import (
    EOS_TOKEN,
    MANIFEST,
    PAD_TOKEN,
    QWEN3_ADDED_TOKENS,
    build_tiny_model,
    qwen3_chat_template,
)
from pipeline.tasks.generators import generate_multihop, generate_niah, tokens_per_word

ASSISTANT_START = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _assistant(content: str, calls: list[dict]) -> dict:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [{"type": "function", "function": call} for call in calls],
    }


def _rendered_assistant(tokenizer, content: str, calls: list[dict]) -> str:
    """The assistant message's text as the template renders it inside an episode (not the last turn)."""
    messages = [
        {"role": "system", "content": "Answer with the tools."},
        {"role": "user", "content": "What is the special magic number for azure-falcon?"},
        _assistant(content, calls),
        {"role": "tool", "content": "done"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False)
    start = text.index(ASSISTANT_START) + len(ASSISTANT_START)
    return text[start : text.index("<|im_end|>", start)]


# (a) loading and running -----------------------------------------------------------------------


def test_loads_with_auto_classes_and_generates(tiny_model_dir: Path, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    manifest = json.loads((tiny_model_dir / MANIFEST).read_text())
    assert model.config.model_type == "qwen3"
    assert model.config.tie_word_embeddings
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["num_parameters"]
    assert 1_000_000 < n_params < 10_000_000
    assert manifest["tokenizer_size"] == len(tokenizer) <= model.config.vocab_size

    im_end, endoftext = tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN])
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.eos_token_id == im_end
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == endoftext
    assert tokenizer.bos_token is None
    assert model.generation_config.eos_token_id == im_end
    assert model.generation_config.pad_token_id == endoftext

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where is the needle?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1 and inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 5


# (b) determinism -------------------------------------------------------------------------------


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_build_is_deterministic_for_a_seed(tiny_model_dir: Path, tmp_path: Path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert (again / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    first, second = _state(tiny_model_dir), _state(again)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    for path in sorted(tiny_model_dir.iterdir()):
        assert path.read_bytes() == (again / path.name).read_bytes(), path.name

    other = build_tiny_model(tmp_path / "other", seed=1)
    assert (other / "tokenizer.json").read_bytes() != (tiny_model_dir / "tokenizer.json").read_bytes()
    other_state = _state(other)
    assert any(not torch.equal(first[n], other_state[n]) for n in first if first[n].shape == other_state[n].shape)


def test_build_reuses_a_finished_folder(tiny_model_dir: Path):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()}
    assert build_tiny_model(tiny_model_dir, seed=0) == tiny_model_dir
    assert {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()} == before


# (c) Qwen3's tokens and chat template ----------------------------------------------------------


def test_added_tokens_are_qwen3s(tokenizer):
    first = tokenizer.convert_tokens_to_ids(QWEN3_ADDED_TOKENS[0][0])
    for offset, (content, special) in enumerate(QWEN3_ADDED_TOKENS):
        token_id = first + offset  # same order as in Qwen3, right after the learned vocabulary
        assert tokenizer.encode(content, add_special_tokens=False) == [token_id], content
        assert (content in tokenizer.all_special_tokens) == special, content
    assert first + len(QWEN3_ADDED_TOKENS) == len(tokenizer)

    # Tool and think tags are not special: decoding that skips special tokens keeps them.
    text = '<|im_start|>assistant\n<think>\nok\n</think>\n\n<tool_call>\n{"name": "finish"}\n</tool_call><|im_end|>'
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.removeprefix("<|im_start|>").removesuffix(
        "<|im_end|>"
    )


def test_chat_template_renders_tools_calls_and_responses(tokenizer):
    assert tokenizer.chat_template == qwen3_chat_template()
    messages = [
        {"role": "system", "content": "Read through the tools."},
        {"role": "user", "content": "What is the special magic number for azure-falcon?"},
        _assistant("", [{"name": "searchEngine", "arguments": {"keyword": "azure-falcon"}}]),
        {"role": "tool", "content": "[chunk 3] ... **azure-falcon** ..."},
        _assistant("Reading it.", [{"name": "readChunk", "arguments": {"chunk_id": 3}}]),
        {"role": "tool", "content": "The special magic number for azure-falcon is 4821337."},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nRead through the tools.\n\n# Tools\n")
    for tool in tool_schemas():
        assert json.dumps(tool, ensure_ascii=False) in text
    assert '<tool_call>\n{"name": "searchEngine", "arguments": {"keyword": "azure-falcon"}}\n</tool_call>' in text
    assert "Reading it.\n<tool_call>" in text
    assert "<|im_start|>user\n<tool_response>\nThe special magic number for azure-falcon is 4821337." in text
    assert text.endswith("\n</tool_response><|im_end|>\n" + ASSISTANT_START)

    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    tag_ids = set(tokenizer.convert_tokens_to_ids(["<tool_call>", "<|im_start|>", "<|im_end|>", "<tool_response>"]))
    assert tag_ids <= set(ids)


def test_trl_recognises_the_template(tokenizer):
    # TRL swaps in its training variant (assistant masks) only for templates it knows byte for byte.
    from trl.chat_template_utils import get_training_chat_template

    assert get_training_chat_template(tokenizer) is not None


# (d) template <-> parser -----------------------------------------------------------------------

ARGUMENT_CASES = [
    [{"name": "finish", "arguments": {"answer": "4821337"}}],
    [{"name": "checkBudget", "arguments": {}}],
    [
        {"name": "deleteContext", "arguments": {"msg_id": [3, 4, 5]}},
        {"name": "readChunk", "arguments": {"scan": True}},
    ],
    [
        {
            "name": "note",
            "arguments": {
                "key": "café-☕ 日本語",
                "summary": 'quotes " and \\ backslash, <b>tags</b> & <think> inside a string',
                "content": "line one\nline two\ttab 😀",
                "nested": [1, [2.5, -3, 1e-07], {"deep": [True, False, None]}, []],
                "big": 12345678901234567890,
                "empty": {},
            },
        }
    ],
]


@pytest.mark.parametrize(
    "calls",
    [
        *ARGUMENT_CASES,
        [{"name": "note", "arguments": {"key": "k", "summary": "s", "content": "ends with </tool_call> here"}}],
    ],
)
def test_template_tool_calls_round_trip_through_parser(tokenizer, calls):
    rendered = _rendered_assistant(tokenizer, "", calls)
    parsed = parse_tool_calls(rendered)
    assert parsed.errors == []
    assert [call.to_dict() for call in parsed.calls] == calls
    # The same through tokens, as a model's output arrives.
    decoded = tokenizer.decode(tokenizer.encode(rendered, add_special_tokens=False))
    assert [call.to_dict() for call in parse_tool_calls(decoded).calls] == calls


def test_last_turn_with_empty_thinking_parses(tokenizer):
    calls = ARGUMENT_CASES[2]
    messages = [{"role": "user", "content": "Go."}, _assistant("", calls)]
    text = tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False)
    start = text.rindex(ASSISTANT_START) + len(ASSISTANT_START)
    rendered = text[start : text.index("<|im_end|>", start)]
    assert rendered.startswith("<think>\n\n</think>\n\n<tool_call>")  # Qwen3 fills the last turn's think block
    parsed = parse_tool_calls(rendered)
    assert parsed.errors == [] and parsed.reasoning == ""
    assert [call.to_dict() for call in parsed.calls] == calls


@pytest.mark.parametrize(
    "content",
    [
        "",
        "Let me search the index.",
        "\nLeading newline is kept.",
        "<think>\nThe key is azure-falcon.\n</think>\n\nSearching now.",
        "Trailing newline.\n",
        "<think>\nOnly thinking.\n</think>\n\n",
    ],
)
@pytest.mark.parametrize("calls", [ARGUMENT_CASES[0], ARGUMENT_CASES[2], ARGUMENT_CASES[3]])
def test_format_assistant_text_matches_template(tokenizer, content, calls):
    assert format_assistant_text(content, calls) == _rendered_assistant(tokenizer, content, calls)


# (e) lossless text -----------------------------------------------------------------------------


def test_generated_text_encodes_losslessly(tokenizer):
    texts = [
        generate_niah(1, min_tokens=3000, max_tokens=3000, n_needles=3, seed=5)[0].documents[0],
        generate_multihop(1, min_tokens=2000, max_tokens=2000, seed=6)[0].documents[0],
        'Café naïve — 日本語 😀\ttabs,  double  spaces\n\n\n[GET sword] [DROP map] 3.14159 -42 1e-6 {"a": [1]}',
    ]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_tokenizer_learned_the_generated_text(tokenizer):
    # Every filler word should be about one token: the tokenizer was trained on this text.
    assert tokens_per_word(tokenizer) < 1.3
    for name in TOOL_NAMES:
        assert len(tokenizer.tokenize(f'"name": "{name}"')) <= 8, name
