"""data/external_niah.jsonl: NIAH tasks written by hand outside the generators (other filler, needle and
question phrasing, key shapes). It validates, stays short, shares no phrasing with any generator, and
the scripted expert solves it (its accuracy is the figure the student's is compared with)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from pipeline.env.pensieve import EnvConfig
from pipeline.play.rollout import Episode, play_episode
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.graders import grade
from pipeline.tasks.phrasing import HOP1, HOP2, HOP_QUESTIONS, NEEDLES, QUESTIONS, SET_QUESTIONS
from pipeline.tasks.schema import read_tasks
from pipeline.tasks.words import FILLER_WORDS

PATH = Path(__file__).resolve().parents[2] / "data" / "external_niah.jsonl"


@pytest.fixture(scope="module")
def tasks():
    return read_tasks(PATH)


def test_file_validates_and_inputs_are_short(tasks):
    assert len(tasks) == 20 and len({t.id for t in tasks}) == 20
    for task in tasks:
        assert task.kind == "exact" and task.documents and task.metadata["source"] == "external_niah"
        assert len(task.load_input().split()) * 1.3 <= 1800, task.id
        assert task.answer in task.load_input(), task.id


def test_no_generator_phrasing_or_filler(tasks):
    templates = [
        t for table in (NEEDLES, QUESTIONS, SET_QUESTIONS, HOP1, HOP2, HOP_QUESTIONS) for f in table.values() for t in f
    ]
    patterns = [re.compile(".+?".join(map(re.escape, re.split(r"\{\w+\}", t))), re.IGNORECASE) for t in templates]
    for task in tasks:
        for text in (task.question, task.load_input()):
            assert not any(p.search(text) for p in patterns), task.id
    words = re.findall(r"[a-z]+", " ".join(t.load_input().lower() for t in tasks))
    filler = set(FILLER_WORDS)
    assert sum(w not in filler for w in words) / len(words) > 0.4, "prose of its own, not the generators' filler"


def test_scripted_expert_accuracy(tasks, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expert = ScriptedExpert(chunk_size=500)
    trajectories = [
        asyncio.run(play_episode(Episode(task, 0, 1), expert, tokenizer, EnvConfig(), grade)) for task in tasks
    ]
    accuracy = sum(t.correct for t in trajectories) / len(trajectories)
    assert accuracy >= 0.9, [(t.task_id, t.answer) for t in trajectories if not t.correct]
    assert all(t.format_errors == 0 for t in trajectories)
