"""Haystacks: seeded filler text with needle sentences at random depths, lengths measured in a tokenizer's tokens.

Shared by every NIAH-style generator (pipeline.tasks.generators, pipeline.tasks.paraphrase).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.tasks.words import FILLER_WORDS

DEFAULT_TOKENS_PER_WORD = 1.3


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


def tokens_per_word(tokenizer: Any | None, seed: int = 0) -> float:
    """Measured tokens per filler word for `tokenizer` (estimate when None)."""
    if tokenizer is None:
        return DEFAULT_TOKENS_PER_WORD
    sample = filler_text(np.random.default_rng(seed), 5000)
    return len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 5000


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
