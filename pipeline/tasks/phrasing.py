"""How generated needles and questions are worded, and what keys and values look like (SPEC 3).

A student trained on one needle sentence, one question and one key shape learns that template, not
the task. So needles and questions come in template *families*: `train` for training data,
`heldout` for evaluation (no phrasing is shared between them), and `classic` (the single template of
the first generators, kept so old seeds give the same tasks). Keys and values come in several shapes;
`distractor_keys` makes near-identical keys (same adjective, another noun; same letters, other digits)
for harder splits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from pipeline.tasks.words import (
    CITY_NAMES,
    CODE_LETTERS,
    KEY_ADJECTIVES,
    KEY_NOUNS,
    OBJECT_MATERIALS,
    OBJECT_NOUNS,
    PERSON_NAMES,
    SURNAMES,
)

Family = Literal["classic", "train", "heldout"]
FAMILIES: tuple[str, ...] = ("classic", "train", "heldout")

# {key}, {value}; {Key} is the key with its first letter capitalised (sentence start).
NEEDLES: dict[str, tuple[str, ...]] = {
    "classic": ("The special magic number for {key} is {value}.",),
    "train": (
        "The special magic number for {key} is {value}.",
        "The access code assigned to {key} is {value}.",
        "For the record, {key} has the identifier {value}.",
        "{Key} was filed under the reference {value}.",
        "Note that the value linked to {key} is {value}.",
    ),
    "heldout": (
        "The registry lists {key} with the entry {value}.",
        "Someone wrote that {key} corresponds to {value}.",
        "In the ledger, the figure recorded for {key} reads {value}.",
    ),
}
QUESTIONS: dict[str, tuple[str, ...]] = {
    "classic": ("What is the special magic number for {key} mentioned in the text?",),
    "train": (
        "What is the special magic number for {key} mentioned in the text?",
        "Which value is linked to {key} in the text?",
        "Look up {key} in the text: what value does it have?",
        "According to the text, what is the code for {key}?",
    ),
    "heldout": (
        "Which entry does the input give for {key}?",
        "Tell me the value recorded for {key}.",
        "What does the document say {key} is paired with?",
    ),
}
# {keys}: the keys as a list in prose.
SET_QUESTIONS: dict[str, tuple[str, ...]] = {
    "classic": (
        "What are the special magic numbers for {keys} mentioned in the text?"
        " Answer with the numbers, comma-separated.",
    ),
    "train": (
        "What are the special magic numbers for {keys} mentioned in the text?"
        " Answer with the numbers, comma-separated.",
        "List the values linked to {keys}, separated by commas.",
    ),
    "heldout": ("Give the entries recorded for {keys}, comma-separated.",),
}
HOP1: dict[str, tuple[str, ...]] = {
    "classic": ("The secret of {person} is kept under the codeword {codeword}.",),
    "train": (
        "The secret of {person} is kept under the codeword {codeword}.",
        "{person} chose the codeword {codeword}.",
    ),
    "heldout": ("The codeword that {person} uses is {codeword}.",),
}
HOP2: dict[str, tuple[str, ...]] = {
    "classic": ("The value behind the codeword {codeword} is {value}.",),
    "train": (
        "The value behind the codeword {codeword} is {value}.",
        "Whoever holds the codeword {codeword} knows the number {value}.",
    ),
    "heldout": ("The codeword {codeword} unlocks the number {value}.",),
}
HOP_QUESTIONS: dict[str, tuple[str, ...]] = {
    "classic": ("What is the value behind the codeword that keeps the secret of {person}?",),
    "train": (
        "What is the value behind the codeword that keeps the secret of {person}?",
        "Which number goes with the codeword chosen by {person}?",
    ),
    "heldout": ("{person} has a codeword; what number does it unlock?",),
}


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"templates={family!r}: expected one of {', '.join(FAMILIES)}")


def fill(template: str, **fields: str) -> str:
    """A template with its fields; `{Key}` is `key` capitalised for a sentence start."""
    key = fields.get("key", "")
    return template.format(Key=key[:1].upper() + key[1:], **fields)


def prose_list(items: list[str], family: str) -> str:
    """Keys as the question lists them: comma-separated (classic), or 'a, b and c'."""
    if family == "classic" or len(items) < 2:
        return ", ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------- key and value shapes


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return str(words[int(rng.integers(0, len(words)))])


def _adjective_noun(rng: np.random.Generator) -> str:
    return f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"  # as the first generators drew it


def _person(rng: np.random.Generator) -> str:
    return f"{_pick(rng, PERSON_NAMES)} {_pick(rng, SURNAMES)}"


def _code(rng: np.random.Generator, letters: int = 2) -> str:
    head = "".join(CODE_LETTERS[int(i)] for i in rng.integers(0, len(CODE_LETTERS), size=letters))
    return f"{head}-{int(rng.integers(1000, 9999))}"


def _city(rng: np.random.Generator) -> str:
    return _pick(rng, CITY_NAMES)


def _object(rng: np.random.Generator) -> str:
    return f"the {_pick(rng, OBJECT_MATERIALS)} {_pick(rng, OBJECT_NOUNS)}"


KEY_SHAPES: dict[str, Callable[[np.random.Generator], str]] = {
    "adjective_noun": _adjective_noun,  # azure-jaguar
    "person": _person,  # Elena Marsh
    "code": _code,  # QX-4471
    "city": _city,  # Lisbon
    "object": _object,  # the copper kettle
}


def number_value(rng: np.random.Generator) -> str:
    return str(int(rng.integers(1_000_000, 9_999_999)))


VALUE_SHAPES: dict[str, Callable[[np.random.Generator], str]] = {
    "number": number_value,  # 4417209
    "code": lambda rng: _code(rng, 3),  # KTV-2291
}


def distractor_key(rng: np.random.Generator, key: str, shape: str) -> str:
    """A key that differs from `key` in one part: the one a careless reader confuses with it."""
    if shape == "adjective_noun":
        adjective, noun = key.split("-", 1)
        return f"{adjective}-{_pick(rng, KEY_NOUNS)}" if rng.random() < 0.5 else f"{_pick(rng, KEY_ADJECTIVES)}-{noun}"
    if shape == "person":
        first, last = key.split(" ", 1)
        return f"{first} {_pick(rng, SURNAMES)}" if rng.random() < 0.5 else f"{_pick(rng, PERSON_NAMES)} {last}"
    if shape == "code":
        head, digits = key.split("-", 1)
        position = int(rng.integers(0, len(digits)))
        digit = str((int(digits[position]) + int(rng.integers(1, 9))) % 10)
        return f"{head}-{digits[:position]}{digit}{digits[position + 1 :]}"
    if shape == "object":
        _, material, noun = key.split(" ", 2)
        return (
            f"the {material} {_pick(rng, OBJECT_NOUNS)}"
            if rng.random() < 0.5
            else f"the {_pick(rng, OBJECT_MATERIALS)} {noun}"
        )
    return KEY_SHAPES[shape](rng)


def check_shapes(names: tuple[str, ...] | list[str], known: dict[str, object], field: str) -> tuple[str, ...]:
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"{field}={list(names)!r}: expected a non-empty list of {', '.join(known)}")
    return tuple(names)
