"""Seeded generators of synthetic long-input tasks (SPEC 3): NIAH single/multi needle and multi-hop.

Haystacks are sentences of common words drawn with numpy, so a 2M-token input is made in about a
second. Lengths are targets in tokens of a given tokenizer: the words-per-token ratio is measured on
a sample when a tokenizer is given, otherwise a fixed estimate is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.tasks.aggregation import generate_aggregation
from pipeline.tasks.inventory import generate_inventory
from pipeline.tasks.paraphrase import generate_paraphrase_niah
from pipeline.tasks.schema import Task
from pipeline.tasks.words import FILLER_WORDS, KEY_ADJECTIVES, KEY_NOUNS, PERSON_NAMES

DEFAULT_TOKENS_PER_WORD = 1.3
NEEDLE_TEMPLATE = "The special magic number for {key} is {value}."
HOP1_TEMPLATE = "The secret of {person} is kept under the codeword {codeword}."
HOP2_TEMPLATE = "The value behind the codeword {codeword} is {value}."


def filler_text(rng: np.random.Generator, n_words: int) -> str:
    """Sentences of 6-17 common words; deterministic for the generator's state."""
    if n_words <= 0:
        return ""
    vocab = np.array(FILLER_WORDS)
    words = vocab[rng.integers(0, len(vocab), size=n_words)].tolist()
    lengths = rng.integers(6, 18, size=n_words // 6 + 2)
    sentences, start = [], 0
    for length in lengths:
        if start >= n_words:
            break
        piece = words[start : start + int(length)]
        start += int(length)
        piece[0] = piece[0].capitalize()
        sentences.append(" ".join(piece) + ".")
    return " ".join(sentences)


def corpus_text(seed: int = 0, n_words: int = 20_000) -> str:
    """Text in the style of every generated input (for training the tiny tokenizer)."""
    rng = np.random.default_rng(seed)
    parts = [filler_text(rng, n_words)]
    for _ in range(200):
        key, value = _needle_key(rng), _number(rng)
        person, codeword = rng.choice(PERSON_NAMES), _needle_key(rng)
        parts += [
            NEEDLE_TEMPLATE.format(key=key, value=value),
            HOP1_TEMPLATE.format(person=person, codeword=codeword),
            HOP2_TEMPLATE.format(codeword=codeword, value=value),
        ]
    return "\n".join(parts)


def tokens_per_word(tokenizer: Any | None, seed: int = 0) -> float:
    """Measured tokens per filler word for `tokenizer` (estimate when None)."""
    if tokenizer is None:
        return DEFAULT_TOKENS_PER_WORD
    sample = filler_text(np.random.default_rng(seed), 5000)
    return len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 5000


def _needle_key(rng: np.random.Generator) -> str:
    return f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"


def _number(rng: np.random.Generator) -> str:
    return str(int(rng.integers(1_000_000, 9_999_999)))


def _haystack_with(rng: np.random.Generator, n_words: int, needles: list[str]) -> tuple[str, list[float]]:
    """Filler of about n_words with each needle sentence inserted at a random depth."""
    depths = sorted(float(d) for d in rng.uniform(0.02, 0.98, size=len(needles)))
    order = rng.permutation(len(needles))
    pieces, done = [], 0
    for depth, idx in zip(depths, order, strict=True):
        take = int(depth * n_words) - done
        pieces.append(filler_text(rng, max(take, 0)))
        pieces.append(needles[idx])
        done += max(take, 0)
    pieces.append(filler_text(rng, n_words - done))
    return " ".join(p for p in pieces if p), depths


def _lengths(rng: np.random.Generator, n: int, min_tokens: int, max_tokens: int) -> list[int]:
    """Log-uniform lengths so short and long inputs are both well represented."""
    if n == 1 or min_tokens == max_tokens:
        return [int(min_tokens)] * n if n == 1 else [int(x) for x in np.linspace(min_tokens, max_tokens, n)]
    return [round(x) for x in np.geomspace(min_tokens, max_tokens, n)]


def generate_niah(
    n: int,
    min_tokens: int = 1000,
    max_tokens: int = 8000,
    n_needles: int = 1,
    seed: int = 0,
    tokenizer: Any | None = None,
    prefix: str = "niah",
) -> list[Task]:
    """Needle-in-a-haystack tasks; several needles make a `set` task asking for all their values."""
    rng = np.random.default_rng(seed)
    tpw = tokens_per_word(tokenizer, seed)
    tasks = []
    for i, target in enumerate(_lengths(rng, n, min_tokens, max_tokens)):
        keys: list[str] = []
        while len(keys) < n_needles:
            key = _needle_key(rng)
            if key not in keys:
                keys.append(key)
        values = [_number(rng) for _ in keys]
        needles = [NEEDLE_TEMPLATE.format(key=k, value=v) for k, v in zip(keys, values, strict=True)]
        text, depths = _haystack_with(rng, int(target / tpw), needles)
        if n_needles == 1:
            question = f"What is the special magic number for {keys[0]} mentioned in the text?"
            kind, answer = "exact", values[0]
        else:
            question = (
                "What are the special magic numbers for "
                + ", ".join(keys)
                + " mentioned in the text? Answer with the numbers, comma-separated."
            )
            kind, answer = "set", values
        tasks.append(
            Task(
                id=f"{prefix}-s{seed}-{i:05d}",
                kind=kind,
                question=question,
                documents=[text],
                answer=answer,
                metadata={
                    "generator": "niah",
                    "seed": seed,
                    "target_tokens": target,
                    "needle_keys": keys,
                    "depths": depths,
                },
            )
        )
    return tasks


def generate_multihop(
    n: int,
    min_tokens: int = 1000,
    max_tokens: int = 8000,
    seed: int = 0,
    tokenizer: Any | None = None,
    prefix: str = "multihop",
) -> list[Task]:
    """Two-hop tasks: a person's codeword is in one place, the codeword's value in another."""
    rng = np.random.default_rng(seed)
    tpw = tokens_per_word(tokenizer, seed)
    tasks = []
    for i, target in enumerate(_lengths(rng, n, min_tokens, max_tokens)):
        person, codeword, value = str(rng.choice(PERSON_NAMES)), _needle_key(rng), _number(rng)
        needles = [
            HOP1_TEMPLATE.format(person=person, codeword=codeword),
            HOP2_TEMPLATE.format(codeword=codeword, value=value),
        ]
        text, depths = _haystack_with(rng, int(target / tpw), needles)
        tasks.append(
            Task(
                id=f"{prefix}-s{seed}-{i:05d}",
                kind="exact",
                question=f"What is the value behind the codeword that keeps the secret of {person}?",
                documents=[text],
                answer=value,
                metadata={
                    "generator": "multihop",
                    "seed": seed,
                    "target_tokens": target,
                    "person": person,
                    "depths": depths,
                },
            )
        )
    return tasks


GENERATORS = {
    "niah": generate_niah,
    "multihop": generate_multihop,
    "inventory": generate_inventory,
    "aggregation": generate_aggregation,
    "paraphrase_niah": generate_paraphrase_niah,
}
