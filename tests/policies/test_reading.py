"""Template-free reading (pipeline/policies/reading.py): keys from any question wording, facts from any
needle wording, tolerant to case, hyphens and spacing, and never fooled by a near-identical key."""

from __future__ import annotations

import pytest

from pipeline.policies.reading import (
    decoy_keyword,
    find_fact,
    hint_words,
    is_hop_question,
    question_keys,
    search_pieces,
)
from pipeline.tasks.generators import generate_multihop, generate_niah


@pytest.mark.parametrize(
    ("question", "keys"),
    [
        ("What is the special magic number for azure-jaguar mentioned in the text?", ["azure-jaguar"]),
        ("Which value is linked to the copper kettle in the text?", ["copper kettle"]),
        ("According to the text, what is the code for QX-4471?", ["QX-4471"]),
        ("Tell me the value recorded for Elena Marsh.", ["Elena Marsh"]),
        ("From which stand does bus line 38X depart?", ["38X"]),  # an unlisted verb is trimmed
        ("Our crew needs the permit number of the schooner Marigold. What is it?", ["schooner Marigold"]),
        (
            "Give the entries recorded for Oslo, the jade locket and Rosa Lind, comma-separated.",
            ["Oslo", "jade locket", "Rosa Lind"],
        ),
        ("What is Alice's codeword?", ["Alice"]),
        ("What is it?", []),
    ],
)
def test_question_keys(question, keys):
    assert question_keys(question) == keys


def test_every_generated_question_gives_its_keys_and_every_needle_its_value():
    for family in ("classic", "train", "heldout"):
        for needles in (1, 3):
            for task in generate_niah(40, 200, 200, n_needles=needles, seed=3, templates=family, n_distractors=2):
                keys = question_keys(task.question)
                assert [k.lower() for k in keys] == [
                    k.lower().removeprefix("the ") for k in task.metadata["needle_keys"]
                ]
                answers = [task.answer] if needles == 1 else task.answer
                for key, answer in zip(keys, answers, strict=True):
                    assert find_fact(task.documents[0], key)[0] == answer
        for task in generate_multihop(15, 200, 200, seed=3, templates=family):
            assert is_hop_question(task.question) and question_keys(task.question) == [task.metadata["person"]]
            codeword, _ = find_fact(task.documents[0], task.metadata["person"], "link")
            assert find_fact(task.documents[0], codeword)[0] == task.answer


def test_find_fact_is_tolerant_to_case_hyphens_and_spacing():
    assert find_fact("Blah. The code of QX4471 is 5550123. More.", "QX-4471") == (
        "5550123",
        "The code of QX4471 is 5550123.",
    )
    assert find_fact("AZURE JAGUAR holds 1234567.", "azure-jaguar")[0] == "1234567"
    assert find_fact("Azure-Jaguar: KTV-2291.", "azure jaguar")[0] == "KTV-2291"


def test_find_fact_ignores_near_identical_keys_and_key_digits():
    text = "The code for azure-jackal is 1111111. The code for coral-jaguar is 2222222."
    assert find_fact(text, "azure-jaguar") is None
    assert find_fact(text + " The code for azure-jaguar is 3333333.", "azure-jaguar")[0] == "3333333"
    assert (
        find_fact("Room 414 has the combination 7731-90.", "414")[0] == "7731-90"
    )  # the key's own digits are not the value
    assert find_fact("Nothing with digits about azure-jaguar here.", "azure-jaguar") is None


def test_a_value_next_to_a_question_word_wins():
    text = "The ferry Skylark 2 carries 4210 passengers per week under licence M-661."
    question = "Name the licence under which the ferry Skylark 2 operates."
    keys = question_keys(question)
    assert keys == ["ferry Skylark 2"]
    assert find_fact(text, keys[0], hints=hint_words(question, keys))[0] == "M-661"
    assert find_fact(text, keys[0])[0] == "4210"  # without the hint: the first value after the key


def test_search_pieces_and_decoys():
    assert search_pieces("azure-jaguar") == ["jaguar", "azure"]
    assert search_pieces("Elena Marsh") == ["Elena", "Marsh"]
    assert decoy_keyword("azure-jaguar") == "azurejaguar"
    assert decoy_keyword("QX-4471") == "QX4471"
    assert decoy_keyword("Lisbon") == "Lisbons"
