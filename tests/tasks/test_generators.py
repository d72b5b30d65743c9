"""Generators (pipeline/tasks/generators.py, phrasing.py): phrasing and shape variety, train/held-out
template disjointness, distractor needles, the classic family unchanged, seeds and speed."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pipeline.tasks.generators import generate_multihop, generate_niah
from pipeline.tasks.phrasing import (
    HOP1,
    HOP2,
    HOP_QUESTIONS,
    KEY_SHAPES,
    NEEDLES,
    QUESTIONS,
    SET_QUESTIONS,
    VALUE_SHAPES,
    fill,
)

ALL_TEMPLATES = (NEEDLES, QUESTIONS, SET_QUESTIONS, HOP1, HOP2, HOP_QUESTIONS)


def template_regex(template: str) -> re.Pattern[str]:
    """A template as a regex: each {field} matches any text."""
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts), re.IGNORECASE)


def matches_family(text: str, family: str) -> bool:
    return any(template_regex(t).search(text) for table in ALL_TEMPLATES for t in table[family])


def test_train_and_heldout_share_no_template():
    for table in ALL_TEMPLATES:
        assert not set(table["train"]) & set(table["heldout"])
        for held in table["heldout"]:  # nor does a held-out phrasing read as a training one
            assert not any(template_regex(t).fullmatch(held) for t in table["train"])


def test_train_family_varies_needles_questions_keys_and_values():
    tasks = generate_niah(80, 200, 300, seed=1, templates="train")
    meta = [t.metadata for t in tasks]
    assert Counter(m["key_shape"] for m in meta).keys() == set(KEY_SHAPES)
    assert Counter(m["value_shape"] for m in meta).keys() == set(VALUE_SHAPES)
    assert {i for m in meta for i in m["needle_templates"]} == set(range(len(NEEDLES["train"])))
    assert {m["question_template"] for m in meta} == set(range(len(QUESTIONS["train"])))
    codes = [t.answer for t, m in zip(tasks, meta, strict=True) if m["value_shape"] == "code"]
    assert codes and all(re.fullmatch(r"[A-Z]{3}-\d{4}", c) for c in codes)
    for task, m in zip(tasks, meta, strict=True):
        needle = fill(NEEDLES["train"][m["needle_templates"][0]], key=m["needle_keys"][0], value=task.answer)
        assert needle in task.documents[0]
        assert task.question == fill(QUESTIONS["train"][m["question_template"]], key=m["needle_keys"][0])


@pytest.mark.parametrize("shape", sorted(KEY_SHAPES))
def test_each_key_shape_can_be_asked_for(shape):
    tasks = generate_niah(5, 200, 200, seed=2, templates="train", key_shapes=[shape])
    assert {t.metadata["key_shape"] for t in tasks} == {shape}
    shapes = {
        "adjective_noun": r"[a-z]+-[a-z]+",
        "person": r"[A-Z][a-z]+ [A-Z][a-z]+",
        "code": r"[A-Z]{2}-\d{4}",
        "city": r"[A-Z][a-z]+",
        "object": r"the [a-z]+ [a-z-]+",
    }
    assert all(re.fullmatch(shapes[shape], t.metadata["needle_keys"][0]) for t in tasks)


def test_heldout_tasks_use_only_heldout_phrasing_and_another_stream():
    train = generate_niah(30, 200, 300, seed=5, templates="train") + generate_multihop(
        10, 200, 300, seed=5, templates="train"
    )
    heldout = generate_niah(30, 200, 300, seed=5, templates="heldout")
    heldout += generate_niah(5, 300, 300, n_needles=3, seed=5, templates="heldout")
    heldout += generate_multihop(10, 200, 300, seed=5, templates="heldout")
    for task in heldout:
        assert not matches_family(task.question, "train") and not matches_family(task.documents[0], "train")
        assert matches_family(task.question, "heldout")
    for task in train:
        assert not matches_family(task.question, "heldout") and not matches_family(task.documents[0], "heldout")
    assert not {t.id for t in train} & {t.id for t in heldout}
    assert not {t.documents[0] for t in train} & {t.documents[0] for t in heldout}


def test_classic_family_is_the_first_generators_template_and_default():
    task = generate_niah(1, 300, 300, seed=0)[0]
    key, value = task.metadata["needle_keys"][0], task.answer
    assert task.id == "niah-s0-00000" and "templates" not in task.metadata
    assert task.question == f"What is the special magic number for {key} mentioned in the text?"
    assert f"The special magic number for {key} is {value}." in task.documents[0]
    assert re.fullmatch(r"[a-z]+-[a-z]+", key) and re.fullmatch(r"\d{7}", value)
    hop = generate_multihop(1, 300, 300, seed=0)[0]
    assert hop.question == f"What is the value behind the codeword that keeps the secret of {hop.metadata['person']}?"


def test_same_seed_same_tasks():
    first = generate_niah(4, 300, 600, n_needles=2, seed=9, templates="train", n_distractors=2)
    again = generate_niah(4, 300, 600, n_needles=2, seed=9, templates="train", n_distractors=2)
    assert [t.model_dump() for t in first] == [t.model_dump() for t in again]


@pytest.mark.parametrize("shape", ["adjective_noun", "person", "code", "object"])
def test_distractors_are_near_identical_keys_with_other_values(shape):
    tasks = generate_niah(10, 300, 300, seed=3, templates="train", key_shapes=[shape], n_distractors=2)
    for task in tasks:
        key, distractors = task.metadata["needle_keys"][0], task.metadata["distractor_keys"]
        assert len(distractors) == 2 and len({d.lower() for d in distractors} | {key.lower()}) == 3
        for near in distractors:
            shared = set(re.split(r"[- ]", key)) & set(re.split(r"[- ]", near))
            assert shared - {"the"}, (key, near)  # differs in one part only
            sentence = next(s for s in re.split(r"(?<=\.) ", task.documents[0]) if near.lower() in s.lower())
            assert task.answer not in sentence  # a distractor carries another value
        assert task.documents[0].count(task.answer) == 1
        assert len(task.metadata["depths"]) == 3


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="templates="):
        generate_niah(1, templates="test")
    with pytest.raises(ValueError, match="key_shapes="):
        generate_niah(1, templates="train", key_shapes=["planet"])
    with pytest.raises(ValueError, match="n_distractors="):
        generate_niah(1, n_distractors=-1)


def test_two_million_tokens_with_varied_phrasing_and_distractors():
    """(How fast: benchmarks/env_bench.py.)"""
    task = generate_niah(1, 2_000_000, 2_000_000, n_needles=2, seed=0, templates="train", n_distractors=3)[0]
    assert len(task.documents[0].split()) > 1_400_000
