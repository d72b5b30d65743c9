"""Seeded paraphrase NIAH tasks: the question names the needle with synonyms and descriptions, not its words.

Keyword search is the StateLM paper's named weak spot: a needle "The locker of the crimson falcon opens
with the combination 4821937." is not found by "Which code unlocks the storage cabinet belonging to
the blood-red swift bird of prey?". Each haystack also holds distractor needles of the same shape that
share one attribute with the target (same animal, colour or object), so a reader must match the whole
description, not just find the one sentence that is not filler. No question word occurs in its needle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.tasks.haystack import _haystack_with, _lengths, _number, tokens_per_word
from pipeline.tasks.schema import Task

# (needle word, what the question calls it): no word of a paraphrase occurs in any needle word
COLOURS = (
    ("crimson", "blood-red"),
    ("azure", "sky-blue"),
    ("emerald", "grass-green"),
    ("ivory", "cream-coloured"),
    ("ebony", "jet-black"),
    ("violet", "lavender-purple"),
    ("amber", "honey-orange"),
    ("silver", "pale grey"),
)
ANIMALS = (
    ("falcon", "swift bird of prey"),
    ("otter", "playful river mammal"),
    ("badger", "striped burrowing creature"),
    ("heron", "long-legged wading bird"),
    ("jaguar", "spotted jungle cat"),
    ("tortoise", "slow shelled reptile"),
    ("wolf", "howling pack canine"),
    ("beetle", "hard-winged insect"),
    ("dolphin", "clever sea mammal"),
    ("owl", "nocturnal hooting bird"),
)
OBJECTS = (
    ("locker", "storage cabinet"),
    ("chest", "treasure box"),
    ("vault", "strongroom"),
    ("diary", "personal journal"),
    ("suitcase", "travel luggage"),
    ("mailbox", "letter slot"),
    ("toolbox", "kit of instruments"),
    ("garage", "vehicle shelter"),
)
NEEDLE_TEMPLATES = (
    "The {obj} of the {colour} {animal} opens with the combination {value}.",
    "Whoever wants into the {obj} of the {colour} {animal} must dial {value}.",
    "The {colour} {animal} guards its {obj} with the combination {value}.",
)
QUESTION_TEMPLATES = (
    "Which code unlocks the {obj} belonging to the {colour} {animal}? Answer with the number.",
    "What digits give access to the {obj} owned by the {colour} {animal}? Answer with the number.",
)


def generate_paraphrase_niah(
    n: int,
    min_tokens: int = 1000,
    max_tokens: int = 8000,
    n_distractors: int = 3,
    seed: int = 0,
    tokenizer: Any | None = None,
    prefix: str = "paraphrase",
) -> list[Task]:
    """NIAH tasks whose question paraphrases the needle; `n_distractors` near-miss needles per haystack."""

    rng = np.random.default_rng(seed)
    tpw = tokens_per_word(tokenizer, seed)
    tasks = []
    for i, target_tokens in enumerate(_lengths(rng, n, min_tokens, max_tokens)):
        triples = _triples(rng, 1 + n_distractors)
        values: list[str] = []
        while len(values) < len(triples):
            value = _number(rng)
            if value not in values:
                values.append(value)
        needles = [_needle(rng, t, v) for t, v in zip(triples, values, strict=True)]
        text, depths = _haystack_with(rng, int(target_tokens / tpw), needles)
        (c, a, o) = triples[0]
        template = QUESTION_TEMPLATES[int(rng.integers(len(QUESTION_TEMPLATES)))]
        question = template.format(obj=OBJECTS[o][1], colour=COLOURS[c][1], animal=ANIMALS[a][1])
        tasks.append(
            Task(
                id=f"{prefix}-s{seed}-{i:05d}",
                kind="exact",
                question=question,
                documents=[text],
                answer=values[0],
                metadata={
                    "generator": "paraphrase_niah",
                    "seed": seed,
                    "target_tokens": target_tokens,
                    "needle": needles[0],
                    "distractors": needles[1:],
                    "depths": depths,
                },
            )
        )
    return tasks


def _triples(rng: np.random.Generator, count: int) -> list[tuple[int, int, int]]:
    """(colour, animal, object) indices: the target first, then distinct distractors sharing one attribute."""
    target = (int(rng.integers(len(COLOURS))), int(rng.integers(len(ANIMALS))), int(rng.integers(len(OBJECTS))))
    triples = [target]
    sizes = (len(COLOURS), len(ANIMALS), len(OBJECTS))
    while len(triples) < count:
        shared = int(rng.integers(3))
        other = tuple(target[k] if k == shared else int(rng.integers(sizes[k])) for k in range(3))
        if sum(x == y for x, y in zip(other, target, strict=True)) == 1 and other not in triples:
            triples.append(other)  # type: ignore[arg-type]
    return triples


def _needle(rng: np.random.Generator, triple: tuple[int, int, int], value: str) -> str:
    c, a, o = triple
    template = NEEDLE_TEMPLATES[int(rng.integers(len(NEEDLE_TEMPLATES)))]
    return template.format(obj=OBJECTS[o][0], colour=COLOURS[c][0], animal=ANIMALS[a][0], value=value)
