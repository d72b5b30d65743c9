"""The no-tools baseline (SPEC 7): the plain model reads the whole input in its prompt, when it fits, and answers.

What the loop is compared against: without tools a model is limited to inputs that fit its window."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.policies.base import as_action
from pipeline.tasks.schema import Task, task_source

NO_TOOLS_SYSTEM = "Read the text and answer the question. Reply with the answer only."


async def no_tools_baseline(
    tasks: list[Task], policy: Any, tokenizer: Any, max_context_tokens: int, max_output_tokens: int, grader, out: Path
) -> list[dict[str, Any]]:
    """The plain model reads the whole input in its prompt (when it fits) and answers directly."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                record = json.loads(line)
                done[record["task_id"]] = record
            except (json.JSONDecodeError, KeyError):
                continue
    results = list(done.values())
    todo = [t for t in tasks if t.id not in done]
    batch = 8 if hasattr(policy, "act_batch") else 1  # a local model answers several tasks in one batch
    with tqdm(total=len(todo), desc="no-tools baseline") as bar:
        for start in range(0, len(todo), batch):
            records = await _no_tools_batch(todo[start : start + batch], policy, tokenizer, max_context_tokens,
                                            max_output_tokens, grader)  # fmt: skip
            with out.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in records)
            results += records
            bar.update(len(records))
    return results


async def _no_tools_batch(
    tasks: list[Task], policy: Any, tokenizer: Any, max_context_tokens: int, max_output_tokens: int, grader
) -> list[dict[str, Any]]:
    """Answer the tasks whose whole input fits the window; the others are recorded as not fitting."""
    records, asks = [], []
    for task in tasks:
        text = task.load_input()
        messages = [
            {"role": "system", "content": NO_TOOLS_SYSTEM},
            {"role": "user", "content": f"{text}\n\nQuestion: {task.question}"},
        ]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        input_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        fits = prompt_tokens + max_output_tokens <= max_context_tokens
        records.append({"task_id": task.id, "input_tokens": input_tokens, "fits": fits, "answer": None,
                        "correct": False, "source": task_source(task.metadata)})  # fmt: skip
        if fits:
            asks.append((len(records) - 1, task, messages))
    if asks and hasattr(policy, "act_batch"):
        raws = await policy.act_batch([m for _, _, m in asks], [[] for _ in asks], [0] * len(asks))
    else:
        raws = [as_action(await policy.act(m, [], seed=0)).text for _, _, m in asks]
    for (position, task, _), raw in zip(asks, raws, strict=True):
        answer = re.sub(r"<think>.*?</think>", "", as_action(raw).text, flags=re.DOTALL).strip()
        records[position].update(answer=answer, correct=bool(grader(task, answer)))
    return records
