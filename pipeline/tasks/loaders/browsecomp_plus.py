"""BrowseComp-Plus (deep-research questions over a fixed web corpus) -> tasks.

Format followed: the decrypted query file `browsecomp_plus_decrypted.jsonl` that the benchmark's
`scripts_build_index/decrypt_dataset.py` writes from huggingface.co/datasets/Tevatron/browsecomp-plus
(columns query_id, query, answer, evidence_docs, gold_docs, negative_docs; each doc {docid, text[, url]};
read as ground truth by github.com/texttron/BrowseComp-Plus scripts_evaluation/evaluate_with_openai.py),
and optionally the corpus Tevatron/browsecomp-plus-corpus exported to JSONL (docid, text, url).
A doc entry may also be a bare docid (or an object without text); its text then comes from the corpus.

Documents per task (the benchmark has no per-query candidate list, so this is our choice): the
query's evidence docs, then gold docs, then negatives (hard negatives mined for that query, first
`max_negatives` of them when capped), each docid once, then shuffled with a seed derived from
(`seed`, query_id) so the evidence is not always first. Each document starts with its docid (and URL)
so answers can cite it. Kind is `judge` by default because BrowseComp grades semantic equivalence
with an LLM; `kind="exact"` gives a cheap normalised match for training.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from pipeline.tasks.loaders._common import (
    DEFAULT_INLINE_MAX_CHARS,
    LoadedTasks,
    LoaderError,
    collect,
    field,
    iter_jsonl,
    logger,
    place_documents,
)
from pipeline.tasks.schema import Task

DOC_GROUPS = ("evidence_docs", "gold_docs", "negative_docs")
JUDGE_GUIDANCE = (
    "Judge only the final answer in the response. It is correct if it means the same as the correct answer;"
    " small differences in wording, formatting or numerical rounding are fine, but a different entity,"
    " a hedge between several answers or a missing answer is wrong."
)


def load_browsecomp_plus(
    queries: str | Path,
    corpus: str | Path | None = None,
    *,
    max_negatives: int | None = None,
    kind: Literal["judge", "exact"] = "judge",
    seed: int = 0,
    docs_dir: str | Path | None = None,
    inline_max_chars: int = DEFAULT_INLINE_MAX_CHARS,
    skip_invalid: bool = False,
) -> LoadedTasks:
    """One task per query of the decrypted query JSONL; `corpus` fills in docs given by id only."""
    queries = Path(queries)
    records = list(iter_jsonl(queries))
    texts = _corpus_texts(Path(corpus), _ids_without_text(records), skip_invalid) if corpus is not None else {}

    def build(where: str, record: Any) -> Task:
        query_id = str(field(record, "query_id", (str, int), where))
        groups = {g: _docs(record, g, texts, where) for g in DOC_GROUPS}
        if max_negatives is not None:
            groups["negative_docs"] = groups["negative_docs"][:max_negatives]
        chosen: dict[str, dict] = {}
        for group in DOC_GROUPS:
            for doc in groups[group]:
                chosen.setdefault(doc["docid"], doc)
        if not chosen:
            raise LoaderError(f"{where}: no documents (fields {', '.join(DOC_GROUPS)} are all empty)")
        docs = list(chosen.values())
        random.Random(f"{seed}:{query_id}").shuffle(docs)
        metadata = {
            "benchmark": "browsecomp_plus",
            "query_id": query_id,
            "doc_order": [d["docid"] for d in docs],
            **{g.replace("_docs", "_docids"): [d["docid"] for d in groups[g]] for g in DOC_GROUPS},
        }
        if kind == "judge":
            metadata["judge_guidance"] = JUDGE_GUIDANCE
        return Task(
            id=f"browsecomp_plus/{query_id}",
            kind=kind,
            question=field(record, "query", str, where),
            answer=str(field(record, "answer", (str, int, float), where)),
            metadata=metadata,
            **place_documents([_render(d) for d in docs], docs_dir, inline_max_chars),
        )

    return collect(records, build, skip_invalid=skip_invalid, desc=f"browsecomp_plus {queries.name}")


def _render(doc: dict) -> str:
    head = f"[docid: {doc['docid']}]" + (f" {doc['url']}" if doc.get("url") else "")
    return f"{head}\n{doc['text'].strip()}"


def _docs(record: Any, group: str, texts: dict[str, dict], where: str) -> list[dict]:
    entries = field(record, group, list, where, optional=True) or []
    docs = []
    for i, entry in enumerate(entries):
        spot = f"{where}: field {group!r}[{i}]"
        if isinstance(entry, str | int) and not isinstance(entry, bool):
            doc = {"docid": str(entry)}
        elif isinstance(entry, dict):
            doc = {"docid": str(field(entry, "docid", (str, int), spot))}
            doc.update({k: entry[k] for k in ("text", "url") if isinstance(entry.get(k), str)})
        else:
            raise LoaderError(f"{spot} must be a docid or an object with 'docid'")
        if "text" not in doc:
            if doc["docid"] not in texts:
                raise LoaderError(f"{spot}: docid {doc['docid']} has no text here or in the corpus")
            doc = {**texts[doc["docid"]], **doc}
        docs.append(doc)
    return docs


def _ids_without_text(records: list[tuple[str, Any]]) -> set[str]:
    needed: set[str] = set()
    for _, record in records:
        if not isinstance(record, dict):
            continue
        for group in DOC_GROUPS:
            for entry in record.get(group) or []:
                if isinstance(entry, str | int):
                    needed.add(str(entry))
                elif isinstance(entry, dict) and "docid" in entry and not isinstance(entry.get("text"), str):
                    needed.add(str(entry["docid"]))
    return needed


def _corpus_texts(corpus: Path, needed: set[str], skip_invalid: bool) -> dict[str, dict]:
    """Only the needed docs of the ~100K-doc corpus are kept in memory. A bad corpus line raises, or
    is logged and skipped (queries that need that doc then fail on their own)."""
    found: dict[str, dict] = {}
    if not needed:
        return found
    for where, record in tqdm(iter_jsonl(corpus), desc="browsecomp_plus corpus", unit="doc", disable=None):
        try:
            if isinstance(record, Exception):
                raise record
            docid = str(field(record, "docid", (str, int), where))
            if docid in needed:
                found[docid] = {"docid": docid, "text": field(record, "text", str, where)}
                if isinstance(record.get("url"), str):
                    found[docid]["url"] = record["url"]
        except LoaderError as exc:
            if not skip_invalid:
                raise
            logger.warning("skipping corpus line: %s", exc)
    return found
