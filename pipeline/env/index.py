"""The input document seen through the student's tokenizer: token counts, token chunks, BM25 search.

Chunks are cut on token boundaries of the student tokenizer, so "4000 tokens" means what the budget
means. The document is tokenized once, in pieces cut just before a whitespace (byte-level BPE never
merges across that boundary) so the Rust tokenizer can work on them in parallel.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import bm25s
import numpy as np

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

_PIECE_CHARS = 20_000
_SNIPPET_CHARS = 80


def token_offsets(text: str, tokenizer: Any) -> np.ndarray:
    """Character start offset of every token of `text` (shape [n_tokens + 1], last = len(text))."""
    cuts, start = [], 0
    while start < len(text):
        end = min(start + _PIECE_CHARS, len(text))
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        cuts.append((start, end))
        start = end
    if not cuts:
        return np.array([0], dtype=np.int64)
    pieces = [text[a:b] for a, b in cuts]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: about twice as fast as the Python wrapper
        offset_lists = [e.offsets for e in backend.encode_batch(pieces, add_special_tokens=False)]
    else:
        offset_lists = tokenizer(pieces, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = []
    for (piece_start, _), offsets in zip(cuts, offset_lists, strict=True):
        if offsets:
            starts.append(np.asarray(offsets, dtype=np.int64)[:, 0] + piece_start)
    all_starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    if len(all_starts):
        all_starts[0] = 0
    return np.append(all_starts, len(text))


@dataclass
class SearchHit:
    chunk_id: int
    score: float
    snippet: str


@dataclass
class ChunkIndex:
    """Token chunks of a document and a BM25 index over them."""

    text: str
    offsets: np.ndarray
    chunk_size: int
    overlap: int = 0
    bounds: list[tuple[int, int]] = field(default_factory=list)
    _lower: list[str] = field(default_factory=list, repr=False)
    _bm25: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, text: str, offsets: np.ndarray, chunk_size: int, overlap: int = 0) -> ChunkIndex:
        if overlap >= chunk_size:
            raise ValueError(f"overlap ({overlap}) must be smaller than chunk_size ({chunk_size})")
        n_tokens = len(offsets) - 1
        step = chunk_size - overlap
        bounds = []
        for first in range(0, max(n_tokens, 1), step):
            last = min(first + chunk_size, n_tokens)
            bounds.append((int(offsets[first]), int(offsets[last])))
            if last >= n_tokens:
                break
        index = cls(text=text, offsets=offsets, chunk_size=chunk_size, overlap=overlap, bounds=bounds)
        index._lower = [index.chunk(i).lower() for i in range(len(bounds))]
        corpus_tokens = bm25s.tokenize(index._lower, stopwords="en", show_progress=False)
        index._bm25 = bm25s.BM25()
        index._bm25.index(corpus_tokens, show_progress=False)
        return index

    def __len__(self) -> int:
        return len(self.bounds)

    def chunk(self, chunk_id: int) -> str:
        start, end = self.bounds[chunk_id]
        return self.text[start:end]

    def search(self, query: str, top_k: int = 20) -> list[SearchHit]:
        """BM25 over comma-separated keywords; chunks holding a multi-word keyword as a phrase rank first."""
        keywords = [k.strip().lower() for k in query.split(",") if k.strip()]
        scores = np.zeros(len(self.bounds), dtype=np.float64)
        for keyword in keywords:
            terms = bm25s.tokenize([keyword], stopwords="en", return_ids=False, show_progress=False)[0]
            if terms:
                scores += self._bm25.get_scores(terms)
            if len(terms) > 1 or not re.fullmatch(r"\w+", keyword):
                phrase_bonus = 1.0 + float(scores.max(initial=0.0))
                for i, lower in enumerate(self._lower):
                    if keyword in lower:
                        scores[i] += phrase_bonus
        order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > 0][:top_k]
        return [SearchHit(i, float(scores[i]), self._snippet(i, keywords)) for i in order]

    def _snippet(self, chunk_id: int, keywords: list[str]) -> str:
        """Text around the first keyword (or keyword term) found, with matches in **bold**."""
        lower = self._lower[chunk_id]
        needles = keywords + [t for k in keywords for t in re.findall(r"\w\w+", k)]
        position, match = -1, ""
        for needle in needles:
            position = lower.find(needle)
            if position >= 0:
                match = needle
                break
        if position < 0:
            return self.chunk(chunk_id)[: 2 * _SNIPPET_CHARS].replace("\n", " ") + "..."
        text = self.chunk(chunk_id)
        start, end = max(0, position - _SNIPPET_CHARS), min(len(text), position + len(match) + _SNIPPET_CHARS)
        found = text[position : position + len(match)]
        body = text[start:position] + f"**{found}**" + text[position + len(match) : end]
        return ("..." if start > 0 else "") + body.replace("\n", " ") + ("..." if end < len(text) else "")
