"""Seeded aggregation tasks over a long order list: the answer needs every line, not one needle (SPEC 3).

The input is one order per line, `Order 00042 on day 17: Alice bought 3 sword.`; the question asks
for the total quantity of one item one person bought, or for the number of such orders. Searching
for a passage does not answer it; counting over the whole list does (e.g. code in the RLM REPL, or
map-reduce with sub-model calls over chunks). Lengths are targets in tokens of a given tokenizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.tasks.schema import Task
from pipeline.tasks.words import INVENTORY_ITEMS, PERSON_NAMES

ORDER_TEMPLATE = "Order {number:05d} on day {day}: {person} bought {qty} {item}."
QUESTIONS = {
    "sum": "What is the total quantity of {item} that {person} bought across all orders in the list? "
    "Answer with a number.",
    "count": "How many orders did {person} place for {item} in the list? Answer with a number.",
}
DEFAULT_TOKENS_PER_LINE = 14.0


def _orders(rng: np.random.Generator, n: int, people: list[str], items: list[str]) -> list[tuple[str, int, str]]:
    who = rng.integers(0, len(people), size=n)
    what = rng.integers(0, len(items), size=n)
    qty = rng.integers(1, 10, size=n)
    return [(people[p], int(q), items[i]) for p, q, i in zip(who, qty, what, strict=True)]


def _lines(orders: list[tuple[str, int, str]]) -> list[str]:
    day, lines = 1, []
    for number, (person, qty, item) in enumerate(orders, start=1):
        day += int(number % 37 == 0)
        lines.append(ORDER_TEMPLATE.format(number=number, day=day, person=person, qty=qty, item=item))
    return lines


def tokens_per_line(tokenizer: Any | None, seed: int = 0) -> float:
    if tokenizer is None:
        return DEFAULT_TOKENS_PER_LINE
    rng = np.random.default_rng(seed)
    sample = "\n".join(_lines(_orders(rng, 200, list(PERSON_NAMES), list(INVENTORY_ITEMS))))
    return len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 200


def generate_aggregation(
    n: int,
    min_tokens: int = 1000,
    max_tokens: int = 8000,
    seed: int = 0,
    tokenizer: Any | None = None,
    prefix: str = "aggregation",
) -> list[Task]:
    """Order-list tasks; even indices ask for a total quantity, odd ones for an order count."""
    rng = np.random.default_rng(seed)
    per_line = tokens_per_line(tokenizer, seed)
    lengths = (
        [int(min_tokens)] * n
        if n == 1 or min_tokens == max_tokens
        else [round(x) for x in np.geomspace(min_tokens, max_tokens, n)]
    )
    tasks = []
    for i, target in enumerate(tqdm(lengths, desc=prefix, unit="task", disable=None)):  # (off without a terminal)
        people = [str(p) for p in rng.choice(PERSON_NAMES, size=8, replace=False)]
        items = [str(p) for p in rng.choice(INVENTORY_ITEMS, size=10, replace=False)]
        orders = _orders(rng, max(8, int(target / per_line)), people, items)
        person, _, item = orders[int(rng.integers(0, len(orders)))]
        matching = [qty for p, qty, it in orders if p == person and it == item]
        mode = "sum" if i % 2 == 0 else "count"
        answer = sum(matching) if mode == "sum" else len(matching)
        tasks.append(
            Task(
                id=f"{prefix}-s{seed}-{i:05d}",
                kind="exact",
                question=QUESTIONS[mode].format(item=item, person=person),
                documents=["\n".join(_lines(orders))],
                answer=str(answer),
                metadata={
                    "generator": "aggregation",
                    "seed": seed,
                    "target_tokens": target,
                    "mode": mode,
                    "person": person,
                    "item": item,
                    "orders": len(orders),
                    "matching_orders": len(matching),
                },
            )
        )
    return tasks
