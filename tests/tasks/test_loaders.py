"""Loaders turn the public benchmark formats (tiny fixtures under tests/fixtures/) into task records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.tasks.loaders import (
    LoaderError,
    convert,
    load_browsecomp_plus,
    load_infinitebench,
    load_longmemeval,
    load_novelqa,
    load_ruler,
)
from pipeline.tasks.loaders.ruler import split_prompt
from pipeline.tasks.schema import read_tasks

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOVELQA = FIXTURES / "novelqa"
INFINITEBENCH = FIXTURES / "infinitebench" / "longbook_choice_eng.jsonl"
LONGMEMEVAL = FIXTURES / "longmemeval" / "longmemeval_s.json"
BCP_QUERIES = FIXTURES / "browsecomp_plus" / "browsecomp_plus_decrypted.jsonl"
BCP_CORPUS = FIXTURES / "browsecomp_plus" / "corpus.jsonl"
RULER_SINGLE = FIXTURES / "ruler" / "niah_single_1" / "validation.jsonl"
RULER_MULTI = FIXTURES / "ruler" / "niah_multivalue" / "validation.jsonl"


# ---------------------------------------------------------------- NovelQA


def test_novelqa_corrupt_record_names_file_question_and_field():
    with pytest.raises(LoaderError, match=r"B00\.json: question Q0002: missing field 'Options'"):
        load_novelqa(NOVELQA / "Data")


def test_novelqa_reads_both_layouts_and_points_at_the_book():
    tasks = load_novelqa(NOVELQA / "Data", skip_invalid=True)
    assert tasks.skipped == 1 and "Q0002" in tasks.errors[0]
    by_id = {t.id: t for t in tasks}
    assert set(by_id) == {"novelqa/B00/Q0000", "novelqa/B00/Q0001", "novelqa/B01/Q0100"}
    first = by_id["novelqa/B00/Q0000"]
    assert (first.kind, first.answer, first.choices) == ("multiple_choice", "B", ["9", "11", "12", "2"])
    assert first.metadata["aspect"] == "times" and first.metadata["complexity"] == "mh"
    assert "Mara Quill" in first.load_input()
    assert by_id["novelqa/B00/Q0001"].choices == ["Yes", "No"]  # yes/no questions have two options
    old = by_id["novelqa/B01/Q0100"]  # previous layout: a list, "Answer", "Complex"
    assert (old.answer, old.metadata["complexity"]) == ("C", "sh")
    assert "Ewan Pell" in old.load_input()


def test_novelqa_explicit_books_dir_and_missing_answer(tmp_path):
    data = tmp_path / "q"
    data.mkdir()
    record = {"QID": "Q1", "Question": "Who?", "Options": {"A": "x", "B": "y"}}  # public release: no Gold
    (data / "B01.json").write_text(json.dumps([record]))
    with pytest.raises(LoaderError, match="missing field 'Gold'"):
        load_novelqa(data / "B01.json", books_dir=NOVELQA / "Books")
    with pytest.raises(LoaderError, match=r"no book file B01\.txt"):
        load_novelqa(data / "B01.json", books_dir=tmp_path)
    skipped = load_novelqa(data, books_dir=tmp_path, skip_invalid=True)
    assert (len(skipped), skipped.skipped) == (0, 1)


# ---------------------------------------------------------------- InfiniteBench


def test_infinitebench_corrupt_line_names_file_and_line():
    with pytest.raises(LoaderError, match=r"longbook_choice_eng\.jsonl:4: invalid JSON"):
        load_infinitebench(INFINITEBENCH)


def test_infinitebench_letters_and_shared_context_files(tmp_path):
    tasks = load_infinitebench(INFINITEBENCH, docs_dir=tmp_path / "docs", inline_max_chars=50, skip_invalid=True)
    assert tasks.skipped == 2 and ":5: field 'answer'" in tasks.errors[1]
    assert [t.answer for t in tasks] == ["B", "A", "C"]  # text, [text, letter], bare string
    assert all(t.document_path for t in tasks)
    assert len(list((tmp_path / "docs").iterdir())) == 2  # one file per distinct novel
    assert tasks[0].document_path == tasks[1].document_path
    assert tasks[2].load_input().startswith("Chapter 1. The ferry")


def test_infinitebench_inline_without_docs_dir():
    tasks = load_infinitebench(INFINITEBENCH, skip_invalid=True)
    assert tasks[0].documents and "Dov" in tasks[0].documents[0]


# ---------------------------------------------------------------- LongMemEval


def test_longmemeval_corrupt_entry_names_entry_and_field():
    with pytest.raises(LoaderError, match=r"entry 3 \(q_bad04\).*haystack_dates"):
        load_longmemeval(LONGMEMEVAL)


def test_longmemeval_sessions_rendered_with_dates_without_labels():
    tasks = load_longmemeval(LONGMEMEVAL, skip_invalid=True)
    assert (len(tasks), tasks.skipped) == (3, 1)
    instrument, days, abstain = tasks
    assert instrument.kind == "judge" and instrument.answer == "the cello"
    assert instrument.question.startswith("Current date: 2023/05/30 (Tue) 23:40\n")
    assert len(instrument.documents) == 3 and "Session date: 2023/05/22 (Mon) 10:05" in instrument.documents[1]
    text = instrument.load_input()
    assert "answer_q_inst01" not in text and "has_answer" not in text  # no leaks of the evidence labels
    assert "user: I started learning the cello" in text
    assert instrument.metadata["evidence_sessions"] == [2]
    assert days.answer == "7" and "off by one" in days.metadata["judge_guidance"]
    assert abstain.metadata["abstention"] is True and "cannot be answered" in abstain.metadata["judge_guidance"]


# ---------------------------------------------------------------- BrowseComp-Plus


def test_browsecomp_plus_missing_doc_names_line_and_field():
    with pytest.raises(LoaderError, match=r"decrypted\.jsonl:3: field 'evidence_docs'\[0\]: docid 9999"):
        load_browsecomp_plus(BCP_QUERIES, BCP_CORPUS)


def test_browsecomp_plus_documents_are_evidence_gold_negatives_deduplicated():
    tasks = load_browsecomp_plus(BCP_QUERIES, BCP_CORPUS, skip_invalid=True)
    assert (len(tasks), tasks.skipped) == (2, 1)
    first, second = tasks
    assert first.kind == "judge" and first.answer == "Ilse Marten"
    assert sorted(first.metadata["doc_order"]) == ["5001", "5002", "6001", "6002", "6003"]
    assert first.metadata["gold_docids"] == ["5001"] and first.metadata["evidence_docids"] == ["5001", "5002"]
    assert first.load_input().count("[docid: 5001] https://example.org/weir") == 1
    # ids-only entries are filled from the corpus, URL included
    assert "[docid: 5101] https://example.org/kestrel\nThe trawler Merrow" in second.load_input()
    assert "beekeeping" not in second.load_input()


def test_browsecomp_plus_order_is_seeded_and_negatives_can_be_capped():
    order = load_browsecomp_plus(BCP_QUERIES, BCP_CORPUS, skip_invalid=True)[0].metadata["doc_order"]
    again = load_browsecomp_plus(BCP_QUERIES, BCP_CORPUS, skip_invalid=True)[0].metadata["doc_order"]
    assert order == again
    orders = {
        tuple(load_browsecomp_plus(BCP_QUERIES, BCP_CORPUS, seed=s, skip_invalid=True)[0].metadata["doc_order"])
        for s in range(6)
    }
    assert len(orders) > 1  # the evidence is not always first
    capped = load_browsecomp_plus(BCP_QUERIES, BCP_CORPUS, max_negatives=0, kind="exact", skip_invalid=True)
    assert sorted(capped[0].metadata["doc_order"]) == ["5001", "5002"] and capped[0].kind == "exact"


# ---------------------------------------------------------------- RULER


def test_ruler_missing_outputs_names_line_and_field():
    with pytest.raises(LoaderError, match=r"validation\.jsonl:3: missing field 'outputs'"):
        load_ruler(RULER_SINGLE)


def test_ruler_splits_prompt_into_haystack_and_question():
    tasks = load_ruler(RULER_SINGLE, skip_invalid=True)
    assert [t.id for t in tasks] == ["ruler/niah_single_1/0", "ruler/niah_single_1/1"]
    plain, templated = tasks
    assert plain.kind == "exact" and plain.answer == "8046213"
    assert plain.question == "What is the special magic number for quiet-lantern mentioned in the provided text?"
    for task in tasks:
        haystack = task.load_input()
        assert "One of the special magic numbers for" in haystack
        assert "hidden within" not in haystack and "What is" not in haystack and "<|im_" not in haystack
    assert templated.metadata["length"] == 180 and templated.metadata["token_position_answer"] == 40


def test_ruler_multivalue_is_a_set_task():
    (task,) = load_ruler(RULER_MULTI)
    assert task.kind == "set" and task.answer == ["111", "222", "333"]
    assert task.question.startswith("What are all the special magic numbers for brave-otter")


# RULER prompts as different versions and harnesses render them (the noise haystack and needles of niah.py)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic numbers for wise-heron is: 4417902."
HAYSTACK = f"{NOISE}\n{NOISE}\n{NEEDLE}\n{NOISE}"
ASK = "What is the special magic number for wise-heron mentioned in the provided text?"
INSTRUCTION = "A special magic number is hidden within the following text. Make sure to memorize it."
RULER_VARIANTS = {
    # RULER v0: the answer prefix is part of "input"
    "v0 answer prefix inline": f"{INSTRUCTION} I will quiz you about the number afterwards.\n{HAYSTACK}\n{ASK}"
    " The special magic number for wise-heron mentioned in the provided text is",
    "no quiz sentence": f"{INSTRUCTION}\n{HAYSTACK}\n{ASK}",
    "no instruction": f"{HAYSTACK}\n{ASK}",
    "question first": f"{ASK}\n{INSTRUCTION}\n{HAYSTACK}\nAnswer:",
    "question before and after": f"{INSTRUCTION}\n{ASK}\n\n{HAYSTACK}\n\n{ASK}",
    "other lead-in, llama-3 template": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Read the long text below carefully; special magic numbers are hidden in it.\n"
    f"{HAYSTACK}\nWhich special magic number is given for wise-heron?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "[INST] template, essay on one line": f"[INST] {INSTRUCTION}\n{NOISE} {NEEDLE} {NOISE}\n{ASK} [/INST]",
}


@pytest.mark.parametrize("variant", RULER_VARIANTS)
def test_ruler_finds_haystack_and_question_in_prompt_variants(tmp_path, variant):
    line = {"index": 0, "input": RULER_VARIANTS[variant], "outputs": ["4417902"], "length": 90}
    (path := tmp_path / "niah_single_2" / "validation.jsonl").parent.mkdir()
    path.write_text(json.dumps(line) + "\n")
    (task,) = load_ruler(path)
    haystack = task.load_input()
    assert task.answer == "4417902" and "wise-heron" in task.question and task.question.endswith("?")
    assert haystack.startswith(NOISE) and haystack.endswith(NOISE) and NEEDLE in haystack
    for leftover in ("hidden", "memorize", "quiz", "?", "<|", "INST", "Answer", "mentioned in the provided text is"):
        assert leftover not in haystack


def test_ruler_answer_prefix_field_is_cut_from_a_question_first_prompt():
    prefix = " The special magic number for wise-heron is:"
    haystack, question = split_prompt(f"{ASK}\n{HAYSTACK}\n{prefix}", "f.jsonl:1", ["4417902"], prefix)
    assert haystack == HAYSTACK and question == ASK


def test_ruler_prompt_without_question_is_an_error():
    with pytest.raises(LoaderError, match=r"f\.jsonl:7: field 'input' has no RULER NIAH question"):
        split_prompt("Summarise this text please.", "f.jsonl:7")
    with pytest.raises(LoaderError, match=r"f\.jsonl:8: field 'input' has no RULER NIAH question"):
        split_prompt(f"{INSTRUCTION}\n{HAYSTACK}\nWhat did you read", "f.jsonl:8", ["4417902"])


def test_ruler_haystack_without_the_needles_is_an_error_naming_file_and_line(tmp_path):
    lines = [
        {"index": 0, "input": f"{INSTRUCTION}\n{HAYSTACK}\n{ASK}", "outputs": ["4417902"]},
        {"index": 1, "input": f"{INSTRUCTION}\n{NOISE}\n{ASK}", "outputs": ["4417902"]},
    ]
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(LoaderError, match=r"validation\.jsonl:2: field 'input' has no haystack holding .*4417902"):
        load_ruler(path)
    assert [t.id for t in load_ruler(path, name="x", skip_invalid=True)] == ["ruler/x/0"]


# ---------------------------------------------------------------- convert


def test_convert_writes_portable_task_file(tmp_path):
    out = tmp_path / "out" / "infinitebench.jsonl"
    tasks = convert("infinitebench", out, INFINITEBENCH, inline_max_chars=50, skip_invalid=True)
    assert tasks.skipped == 2
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "out", moved)  # relative document paths survive a move
    reread = read_tasks(moved / "infinitebench.jsonl")
    assert [t.id for t in reread] == [t.id for t in tasks]
    first_line = json.loads((moved / "infinitebench.jsonl").read_text().splitlines()[0])
    assert not Path(first_line["document_path"]).is_absolute()
    assert "Dov" in reread[0].load_input()


def test_convert_novelqa_with_the_cli(tmp_path):
    out = tmp_path / "novelqa.jsonl"
    result = CliRunner().invoke(app, ["tasks", "convert", "novelqa", str(NOVELQA / "Data"), str(out), "--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 tasks" in result.output and "skipped 1 invalid" in result.output
    assert "Mara Quill" in read_tasks(out)[0].load_input()


def test_convert_rejects_options_the_loader_does_not_take(tmp_path):
    with pytest.raises(ValueError, match="ruler loader does not take books_dir"):
        convert("ruler", tmp_path / "x.jsonl", RULER_SINGLE, books_dir="x")
    with pytest.raises(ValueError, match="unknown benchmark"):
        convert("babilong", tmp_path / "x.jsonl", RULER_SINGLE)
