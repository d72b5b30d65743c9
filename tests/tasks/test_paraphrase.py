"""The paraphrase NIAH generator: seeded, registered, and no question word leaks into its needle."""

from __future__ import annotations

import re

from bm25s.stopwords import STOPWORDS_EN

from pipeline.tasks.generators import GENERATORS
from pipeline.tasks.paraphrase import generate_paraphrase_niah


def words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)} - set(STOPWORDS_EN)


def test_seeded_registered_and_the_answer_is_in_the_needle_once():
    tasks = GENERATORS["paraphrase_niah"](20, 800, 800, seed=4)
    again = generate_paraphrase_niah(20, 800, 800, seed=4)
    assert [t.model_dump() for t in tasks] == [t.model_dump() for t in again]
    for task in tasks:
        assert task.metadata["needle"] in task.documents[0] and task.answer in task.metadata["needle"]
        assert task.documents[0].count(task.answer) == 1
        assert len(task.metadata["distractors"]) == 3
        assert all(d in task.documents[0] for d in task.metadata["distractors"])


def test_no_content_word_of_the_question_is_in_its_needle_or_distractors():
    for task in generate_paraphrase_niah(50, 500, 500, seed=1):
        for needle in [task.metadata["needle"], *task.metadata["distractors"]]:
            assert not words(task.question) & words(needle), (task.question, needle)


def test_each_distractor_shares_exactly_one_attribute_with_the_target():
    from pipeline.tasks.paraphrase import ANIMALS, COLOURS, OBJECTS

    def attributes(needle: str) -> tuple[str, ...]:
        return tuple(
            next(w for w, _ in table if re.search(rf"\b{w}\b", needle)) for table in (COLOURS, ANIMALS, OBJECTS)
        )

    for task in generate_paraphrase_niah(30, 500, 500, seed=2):
        target = attributes(task.metadata["needle"])
        for distractor in task.metadata["distractors"]:
            shared = sum(a == b for a, b in zip(attributes(distractor), target, strict=True))
            assert shared == 1, (task.metadata["needle"], distractor)
