"""The project's own tiny Qwen3 (SPEC 8): built locally, so tests and CPU runs need no hub.

`build_tiny_model` trains a byte-level BPE tokenizer laid out like Qwen3's (same normalizer,
pre-tokenizer regex, decoder and added tokens in the same order and with the same special flags,
only the learned vocabulary is small), sets Qwen3's chat template from the installed TRL package,
and saves it with a randomly initialised `Qwen3ForCausalLM`. The tokenizer is trained on the text
the model will meet: generated haystacks and needles, the tool schemas, tool calls and chat
transcripts rendered with the template. Everything downstream loads the folder with the Auto
classes, exactly as it would load a real Qwen3.

The size parameters are explicit so a demo can trade speed for a model that really learns.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from pipeline.env.parsing import format_tool_call
from pipeline.env.tools import TOOL_NAMES, tool_schemas
from pipeline.tasks.generators import NEEDLE_TEMPLATE, corpus_text, filler_text
from pipeline.tasks.words import INVENTORY_ITEMS, KEY_ADJECTIVES, KEY_NOUNS, PERSON_NAMES

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

MANIFEST = "statelm_tiny.json"

# Qwen3's added tokens in id order after the BPE vocabulary, with their `special` flag as in
# Qwen3's tokenizer_config.json. The tool and think tags are *not* special, so decoding with
# skip_special_tokens=True keeps them (tool parsers need them).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# Qwen2/Qwen3 pre-tokenizer: digits one by one, words with their leading space, newlines apart.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAT_TEMPLATE_RESOURCE = ("trl", "chat_templates/qwen3.jinja")


def qwen3_chat_template() -> str:
    """Qwen3's chat template as shipped by the installed TRL (never copied into this repo)."""
    package, name = CHAT_TEMPLATE_RESOURCE
    spec = importlib.util.find_spec(package)  # locates the package without importing it (slow)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; it ships the Qwen3 chat template")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise FileNotFoundError(f"Qwen3 chat template not found in the installed {package}: {path}")
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Training text


# Tools the sample transcripts call before `finish` (readChunk twice: reading dominates episodes).
_TRANSCRIPT_TOOLS = (*(t for t in TOOL_NAMES if t != "finish"), "readChunk")


def _key(rng: np.random.Generator) -> str:
    return f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"


def _number(rng: np.random.Generator) -> str:
    return str(int(rng.integers(1_000_000, 9_999_999)))


def _sample_call(rng: np.random.Generator, msg_id: int, n_chunks: int) -> tuple[dict[str, Any], str]:
    """One plausible Pensieve tool call and a tool result in the style of the environment."""
    name = str(rng.choice(_TRANSCRIPT_TOOLS))
    chunk = int(rng.integers(0, n_chunks))
    key, value = _key(rng), _number(rng)
    snippet = filler_text(rng, int(rng.integers(20, 120)))
    if name == "analyzeText":
        args: dict[str, Any] = {}
        result = f"The input has {int(rng.integers(1000, 200_000))} tokens: {n_chunks} chunks of 4000 tokens."
    elif name == "buildIndex":
        args = {"chunk_size": int(rng.choice([512, 1000, 2000, 4000])), "overlap": int(rng.choice([0, 50]))}
        result = f"Built a BM25 index of {n_chunks} chunks, ids 0 to {n_chunks - 1}."
    elif name == "searchEngine":
        args = {"keyword": f"{key}, magic number"}
        result = "\n".join(
            f"[chunk {int(c)}] ... {filler_text(rng, 8)} **{key}** ..." for c in rng.integers(0, n_chunks, 3)
        )
    elif name == "readChunk":
        args = {"scan": True} if rng.random() < 0.3 else {"chunk_id": chunk}
        needle = " " + NEEDLE_TEMPLATE.format(key=key, value=value) if rng.random() < 0.5 else ""
        result = f"[chunk {chunk}, reading progress {chunk + 1}/{n_chunks}]\n{snippet}{needle}"
    elif name == "note":
        content = f"The magic number for {key} is {value}."
        args = {"key": key, "summary": f"magic number of {key}", "content": content}
        result = f"Stored note '{key}'."
    elif name == "updateNote":
        args = {"key": key, "mode": str(rng.choice(["append", "overwrite", "delete"])), "content": value}
        result = f"Updated note '{key}' ({args['mode']})."
    elif name == "readNote":
        args = {"key": key}
        result = f"The magic number for {key} is {value}."
    elif name == "deleteContext":
        ids = sorted({int(i) for i in rng.integers(2, max(msg_id, 3), size=int(rng.integers(1, 4)))})
        args = {"msg_id": ids if len(ids) > 1 else ids[0]}
        tokens = int(rng.integers(500, 9000))
        result = f"Deleted messages {', '.join(map(str, ids))}; context is {tokens} tokens."
    else:
        args = {}
        used, tokens = int(rng.integers(1, 100)), int(rng.integers(0, 32000))
        result = f"Rounds used: {used}, rounds left: {150 - used}, context tokens available: {tokens}."
    return {"name": name, "arguments": args}, result


def _sample_transcript(rng: np.random.Generator) -> list[dict[str, Any]]:
    """A short Pensieve-style episode as chat messages with structured tool calls."""
    key, person = _key(rng), str(rng.choice(PERSON_NAMES))
    question = str(
        rng.choice(
            [
                f"What is the special magic number for {key} mentioned in the text?",
                f"What is the value behind the codeword that keeps the secret of {person}?",
            ]
        )
    )
    n_chunks = int(rng.integers(2, 40))
    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": "You read a long input through tools. Keep the facts you need in the notebook, delete "
            "bulky messages from your context by msg id, and answer with the finish tool.",
        },
        {"role": "user", "content": f"{question}\n\nNotebook:\n(empty)"},
    ]
    msg_id = 2
    for _ in range(int(rng.integers(2, 7))):
        call, result = _sample_call(rng, msg_id, n_chunks)
        content = ""
        if rng.random() < 0.5:
            content = f"<think>\nI need the {call['name']} tool for {key}.\n</think>\n\n"
        if rng.random() < 0.3:
            content += f"Next I call {call['name']}."
        messages.append(_assistant(content, call))
        messages.append({"role": "tool", "content": f"[msg {msg_id + 1}, reply to msg {msg_id}] {result}"})
        msg_id += 2
    messages.append(_assistant("", {"name": "finish", "arguments": {"answer": _number(rng)}}))
    return messages


def _assistant(content: str, call: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": [{"type": "function", "function": call}]}


def _inventory_text(rng: np.random.Generator, n_lines: int) -> str:
    lines = []
    for _ in range(n_lines):
        item = rng.choice(INVENTORY_ITEMS)
        command = f"[GET {item}]" if rng.random() < 0.6 else f"[DROP {item}]"
        lines.append(f"{filler_text(rng, int(rng.integers(5, 30)))} {command}")
    return "\n".join(lines)


def training_texts(seed: int = 0, n_words: int = 20_000, n_transcripts: int = 64) -> list[str]:
    """The tokenizer's training text: what the environment and the task generators produce."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rng = np.random.default_rng(seed)
    template, tools = qwen3_chat_template(), tool_schemas()
    texts = [corpus_text(seed, n_words), _inventory_text(rng, 300)]
    texts += [json.dumps(tool, ensure_ascii=False) for tool in tools]
    texts.append(" ".join(str(i) for i in range(1000)) + " 0123456789 3.14 -42 1e-6 100%")
    for _ in range(n_transcripts):
        messages = _sample_transcript(rng)
        rendered, _ = render_jinja_template([messages], tools=tools, chat_template=template)
        texts.append(rendered[0])
        calls = [call["function"] for m in messages for call in m.get("tool_calls", [])]
        texts.extend(format_tool_call(call) for call in calls)
    # Added tokens are matched before BPE, so they must not spend merges in the learned vocabulary.
    added = re.compile("|".join(re.escape(content) for content, _ in QWEN3_ADDED_TOKENS))
    return [added.sub("", text) for text in texts]


# ---------------------------------------------------------------------------------------------
# Tokenizer and model


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int = 40960) -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen3's pipeline and added tokens, wrapped as a transformers tokenizer.

    `vocab_size` bounds the whole vocabulary (learned tokens + Qwen3's 26 added tokens); BPE stops
    earlier when the text has no more pairs to merge.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    n_added = len(QWEN3_ADDED_TOKENS)
    if vocab_size < 256 + n_added:
        raise ValueError(f"vocab_size={vocab_size} is too small: need 256 bytes + {n_added} added tokens")
    bpe = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts))
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    first_added = len(vocab)
    for offset, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        vocab[content] = first_added + offset
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in model["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        add_prefix_space=False,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=model_max_length,
    )
    tokenizer.add_tokens([AddedToken(c, special=s, normalized=False) for c, s in QWEN3_ADDED_TOKENS])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [c for c, s in QWEN3_ADDED_TOKENS if s and c != PAD_TOKEN]}
    )
    tokenizer.chat_template = qwen3_chat_template()
    for offset, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        if tokenizer.convert_tokens_to_ids(content) != first_added + offset:
            raise RuntimeError(f"added token {content!r} did not get id {first_added + offset}")
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    vocab_size: int = 4096,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 768,
    max_position_embeddings: int = 40960,
    rope_theta: float = 1_000_000.0,
    pad_vocab_to: int = 64,
    corpus_words: int = 20_000,
    n_transcripts: int = 64,
    overwrite: bool = False,
) -> Path:
    """Build (or reuse) the tiny model in `out_dir`; same arguments give byte-identical files.

    `vocab_size` bounds the tokenizer; the embedding has len(tokenizer) rows rounded up to
    `pad_vocab_to`, so (as in Qwen3) the model's vocab_size may exceed len(tokenizer). A folder
    whose manifest records the same parameters is reused unless `overwrite`.
    """
    from transformers import GenerationConfig, Qwen3ForCausalLM

    out = Path(out_dir)
    params = {
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": rope_theta,
        "pad_vocab_to": pad_vocab_to,
        "corpus_words": corpus_words,
        "n_transcripts": n_transcripts,
    }
    manifest_path = out / MANIFEST
    if not overwrite and _built_with(manifest_path, params):
        return out
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}, "
            f"and num_heads by num_kv_heads={num_kv_heads}"
        )

    texts = training_texts(seed, corpus_words, n_transcripts)
    tokenizer = train_tokenizer(texts, vocab_size, model_max_length=max_position_embeddings)
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = _qwen3_config(params, len(tokenizer), eos_id, pad_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)

    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # written last: its presence marks a finished build
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    manifest = {
        "params": params,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_size": len(tokenizer),
        "model_vocab_size": config.vocab_size,
        "chat_template": "/".join(CHAT_TEMPLATE_RESOURCE),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _built_with(manifest_path: Path, params: dict[str, Any]) -> bool:
    """Whether the folder holds a finished build of these parameters (the manifest is written last)."""
    if not manifest_path.is_file():
        return False
    try:
        return json.loads(manifest_path.read_text())["params"] == params
    except (json.JSONDecodeError, KeyError):
        return False  # an unreadable manifest means an unfinished build: build again


def _qwen3_config(params: dict[str, Any], tokenizer_size: int, eos_id: int, pad_id: int) -> Any:
    """The Qwen3 architecture at the tiny sizes; the embedding rows are len(tokenizer) rounded up to pad_vocab_to."""
    from transformers import Qwen3Config

    hidden, heads, layers = params["hidden_size"], params["num_heads"], params["num_layers"]
    return Qwen3Config(
        vocab_size=-(-tokenizer_size // params["pad_vocab_to"]) * params["pad_vocab_to"],
        hidden_size=hidden,
        intermediate_size=params["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=params["num_kv_heads"],
        head_dim=hidden // heads,
        max_position_embeddings=params["max_position_embeddings"],
        max_window_layers=layers,
        rope_parameters={"rope_type": "default", "rope_theta": params["rope_theta"]},
        tie_word_embeddings=True,
        bos_token_id=pad_id,  # Qwen3's config names <|endoftext|> as bos; the tokenizer adds no bos
        eos_token_id=eos_id,
        dtype=torch.float32,
    )
