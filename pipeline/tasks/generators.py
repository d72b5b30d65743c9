"""Seeded generators of synthetic long-input tasks (SPEC 3): NIAH single/multi needle and multi-hop.

Haystacks are sentences of common words drawn with numpy, so a 2M-token input is made in about a
second. Lengths are targets in tokens of a given tokenizer: the words-per-token ratio is measured on
a sample when a tokenizer is given, otherwise a fixed estimate is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.tasks.aggregation import generate_aggregation
from pipeline.tasks.haystack import (  # noqa: F401  (re-exported: the generators' public helpers)
    DEFAULT_TOKENS_PER_WORD,
    _haystack_with,
    _lengths,
    _number,
    filler_text,
    tokens_per_word,
)
from pipeline.tasks.inventory import generate_inventory
from pipeline.tasks.paraphrase import generate_paraphrase_niah
from pipeline.tasks.phrasing import (
    FAMILIES,
    HOP1,
    HOP2,
    HOP_QUESTIONS,
    KEY_SHAPES,
    NEEDLES,
    QUESTIONS,
    SET_QUESTIONS,
    VALUE_SHAPES,
    check_family,
    check_shapes,
    distractor_key,
    fill,
    prose_list,
)
from pipeline.tasks.schema import Task
from pipeline.tasks.words import KEY_ADJECTIVES, KEY_NOUNS, PERSON_NAMES

NEEDLE_TEMPLATE = "The special magic number for {key} is {value}."
HOP1_TEMPLATE = "The secret of {person} is kept under the codeword {codeword}."
HOP2_TEMPLATE = "The value behind the codeword {codeword} is {value}."


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


def _needle_key(rng: np.random.Generator) -> str:
    return f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}"


def _family_rng(seed: int, family: str) -> np.random.Generator:
    """`classic` keeps the first generators' stream; the other families draw from their own streams, so
    a held-out split never repeats a training task even with the same seed."""
    check_family(family)
    return np.random.default_rng(seed if family == "classic" else [seed, FAMILIES.index(family)])


def _task_id(prefix: str, family: str, seed: int, i: int) -> str:
    return f"{prefix}-s{seed}-{i:05d}" if family == "classic" else f"{prefix}-{family}-s{seed}-{i:05d}"


def _distinct_keys(rng: np.random.Generator, n: int, make, taken: list[str]) -> list[str]:
    keys: list[str] = []
    for _ in range(100 * n + 100):
        if len(keys) == n:
            break
        key = make(rng)
        if key.lower() not in {k.lower() for k in [*taken, *keys]}:
            keys.append(key)
    if len(keys) < n:
        raise ValueError(f"could not draw {n} distinct keys; ask for fewer needles or distractors")
    return keys


def generate_niah(
    n: int,
    min_tokens: int = 1000,
    max_tokens: int = 8000,
    n_needles: int = 1,
    seed: int = 0,
    tokenizer: Any | None = None,
    prefix: str = "niah",
    *,
    templates: str = "classic",
    key_shapes: tuple[str, ...] | list[str] | None = None,
    value_shapes: tuple[str, ...] | list[str] | None = None,
    n_distractors: int = 0,
) -> list[Task]:
    """Needle-in-a-haystack tasks; several needles make a `set` task asking for all their values.

    `templates` picks the phrasing family (pipeline/tasks/phrasing.py): `classic` (one template,
    adjective-noun keys, 7-digit numbers: the first generators' tasks), `train` or `heldout` (several
    needle and question templates, every key and value shape unless `key_shapes` / `value_shapes`
    narrow them). `n_distractors` adds needles whose keys differ from a real key in one part (same
    template family, other values): a reader must match the key exactly.
    """
    rng = _family_rng(seed, templates)
    classic = templates == "classic"
    shapes = check_shapes(
        key_shapes or (("adjective_noun",) if classic else tuple(KEY_SHAPES)), KEY_SHAPES, "key_shapes"
    )
    values_from = check_shapes(
        value_shapes or (("number",) if classic else tuple(VALUE_SHAPES)), VALUE_SHAPES, "value_shapes"
    )
    if n_distractors < 0:
        raise ValueError(f"n_distractors={n_distractors} must be >= 0")
    tpw = tokens_per_word(tokenizer, seed)
    tasks = []
    for i, target in enumerate(tqdm(_lengths(rng, n, min_tokens, max_tokens), desc=prefix, unit="task", disable=None)):
        shape = shapes[0] if len(shapes) == 1 else str(rng.choice(shapes))
        value_shape = values_from[0] if len(values_from) == 1 else str(rng.choice(values_from))
        keys = _distinct_keys(rng, n_needles, KEY_SHAPES[shape], [])
        values = _distinct_keys(rng, n_needles, VALUE_SHAPES[value_shape], [])
        needle_ids = [0 if classic else int(rng.integers(0, len(NEEDLES[templates]))) for _ in keys]
        needles = [
            fill(NEEDLES[templates][t], key=k, value=v) for t, k, v in zip(needle_ids, keys, values, strict=True)
        ]
        distractors, distractor_needles = _distractors(rng, keys, values, shape, value_shape, templates, n_distractors)
        text, depths = _haystack_with(rng, int(target / tpw), needles + distractor_needles)
        question_id, question = _niah_question(rng, keys, templates)
        kind, answer = ("exact", values[0]) if n_needles == 1 else ("set", values)
        metadata = {
            "generator": "niah",
            "seed": seed,
            "target_tokens": target,
            "needle_keys": keys,
            "depths": depths,
        }
        if not classic or n_distractors:
            metadata.update(
                templates=templates,
                key_shape=shape,
                value_shape=value_shape,
                needle_templates=needle_ids,
                question_template=question_id,
                distractor_keys=distractors,
            )
        tasks.append(
            Task(
                id=_task_id(prefix, templates, seed, i),
                kind=kind,
                question=question,
                documents=[text],
                answer=answer,
                metadata=metadata,
            )
        )
    return tasks


def _distractors(
    rng: np.random.Generator,
    keys: list[str],
    values: list[str],
    shape: str,
    value_shape: str,
    templates: str,
    n_distractors: int,
) -> tuple[list[str], list[str]]:
    """Keys that differ from a real key in one part (cycling through the real keys), and their needles: other
    values, any needle template of the family."""
    distractors: list[str] = []
    for d in range(n_distractors):
        near = keys[d % len(keys)]
        distractors += _distinct_keys(
            rng, 1, lambda r, near=near, shape=shape: distractor_key(r, near, shape), keys + distractors
        )
    distractor_values = _distinct_keys(rng, len(distractors), VALUE_SHAPES[value_shape], values)
    needles = [
        fill(NEEDLES[templates][int(rng.integers(0, len(NEEDLES[templates])))], key=k, value=v)
        for k, v in zip(distractors, distractor_values, strict=True)
    ]
    return distractors, needles


def _niah_question(rng: np.random.Generator, keys: list[str], templates: str) -> tuple[int, str]:
    """(template index, question): the value of the one key, or (a `set` task) the values of every key."""
    classic = templates == "classic"
    if len(keys) == 1:
        question_id = 0 if classic else int(rng.integers(0, len(QUESTIONS[templates])))
        return question_id, fill(QUESTIONS[templates][question_id], key=keys[0])
    question_id = 0 if classic else int(rng.integers(0, len(SET_QUESTIONS[templates])))
    return question_id, SET_QUESTIONS[templates][question_id].format(keys=prose_list(keys, templates))


def generate_multihop(
    n: int,
    min_tokens: int = 1000,
    max_tokens: int = 8000,
    seed: int = 0,
    tokenizer: Any | None = None,
    prefix: str = "multihop",
    *,
    templates: str = "classic",
) -> list[Task]:
    """Two-hop tasks: a person's codeword is in one place, the codeword's value in another.
    `templates` picks the phrasing family as in `generate_niah`."""
    rng = _family_rng(seed, templates)
    classic = templates == "classic"
    tpw = tokens_per_word(tokenizer, seed)
    tasks = []
    for i, target in enumerate(tqdm(_lengths(rng, n, min_tokens, max_tokens), desc=prefix, unit="task", disable=None)):
        person, codeword, value = str(rng.choice(PERSON_NAMES)), _needle_key(rng), _number(rng)
        ids = [0 if classic else int(rng.integers(0, len(t[templates]))) for t in (HOP1, HOP2, HOP_QUESTIONS)]
        needles = [
            HOP1[templates][ids[0]].format(person=person, codeword=codeword),
            HOP2[templates][ids[1]].format(codeword=codeword, value=value),
        ]
        text, depths = _haystack_with(rng, int(target / tpw), needles)
        metadata = {
            "generator": "multihop",
            "seed": seed,
            "target_tokens": target,
            "person": person,
            "depths": depths,
        }
        if not classic:
            metadata.update(templates=templates, needle_templates=ids[:2], question_template=ids[2])
        tasks.append(
            Task(
                id=_task_id(prefix, templates, seed, i),
                kind="exact",
                question=HOP_QUESTIONS[templates][ids[2]].format(person=person),
                documents=[text],
                answer=value,
                metadata=metadata,
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
