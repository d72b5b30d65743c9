"""Seeded Inventory streams (SPEC 2 "Variants", 3): noise words with `[GET item]` / `[DROP item]` commands.

A stream is `n_chunks` chunks of `words_per_chunk` word slots. Each slot is a common word, or with
probability `command_density` a command over a small item vocabulary (fantasy items, drawn per task
from `INVENTORY_ITEMS`, never a noise word). The inventory starts empty; GET adds an item, DROP removes
it. GET names an item not held, DROP one that is held, unless `adversarial_drops` is set: then half of
the drops name an item that is not held, which changes nothing. GET is likelier when few items are
held, so the inventory hovers around half the vocabulary.

The command grammar lives here (`COMMAND`, `apply_commands`) so the generator, the environment's
per-turn state check and the scripted expert read the stream the same way.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pipeline.tasks.schema import Task
from pipeline.tasks.words import FILLER_WORDS, INVENTORY_ITEMS

COMMAND = re.compile(r"\[(GET|DROP) ([^\[\]]+?)\]")
NOISE_WORDS = tuple(w for w in FILLER_WORDS if w not in set(INVENTORY_ITEMS))
QUESTION = "Which items are in the inventory at the end of the stream?"


def apply_commands(items: list[str], text: str) -> list[str]:
    """The inventory after the commands in `text`, in order of acquisition (DROP of an unheld item: no-op)."""
    items = list(items)
    for verb, item in COMMAND.findall(text):
        item = item.strip()
        if verb == "GET" and item not in items:
            items.append(item)
        elif verb == "DROP" and item in items:
            items.remove(item)
    return items


def inventory_states(chunks: list[str]) -> list[list[str]]:
    """The true inventory after each chunk."""
    states, items = [], []
    for chunk in chunks:
        items = apply_commands(items, chunk)
        states.append(items)
    return states


def _stream(
    rng: np.random.Generator,
    n_chunks: int,
    words_per_chunk: int,
    command_density: float,
    vocabulary: list[str],
    adversarial_drops: bool,
) -> tuple[list[str], int]:
    """The chunks of one stream and how many commands it holds."""
    noise = np.array(NOISE_WORDS)
    held: list[str] = []
    chunks, n_commands = [], 0
    for _ in range(n_chunks):
        slots = noise[rng.integers(0, len(noise), size=words_per_chunk)].tolist()
        is_command = rng.random(words_per_chunk) < command_density
        for position in np.flatnonzero(is_command):
            free = [item for item in vocabulary if item not in held]
            if free and rng.random() < len(free) / len(vocabulary):
                item = free[int(rng.integers(len(free)))]
                held.append(item)
                slots[position] = f"[GET {item}]"
            elif held and not (adversarial_drops and free and rng.random() < 0.5):
                item = held.pop(int(rng.integers(len(held))))
                slots[position] = f"[DROP {item}]"
            else:  # an adversarial drop: the item is not held, nothing changes
                slots[position] = f"[DROP {free[int(rng.integers(len(free)))]}]"
        n_commands += int(is_command.sum())
        chunks.append(" ".join(slots))
    return chunks, n_commands


def generate_inventory(
    n: int,
    n_chunks: int = 10,
    words_per_chunk: int = 200,
    seed: int = 0,
    command_density: float = 0.01,
    n_items: int = 12,
    adversarial_drops: bool = False,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    tokenizer: Any | None = None,
    prefix: str = "inventory",
) -> list[Task]:
    """`n` Inventory tasks (kind `set`): documents are the chunks, the answer is the final item list.

    Sizes are in words (`n_chunks` x `words_per_chunk`); `min_tokens`, `max_tokens` and `tokenizer` are
    accepted so every generator takes the recipe's common arguments, and are not used. Task `i` depends
    only on (seed, i), so a larger `n` extends a task set without changing its first tasks.
    """
    if n_chunks < 1 or words_per_chunk < 1:
        raise ValueError(f"inventory: n_chunks ({n_chunks}) and words_per_chunk ({words_per_chunk}) must be at least 1")
    if not 0.0 <= command_density <= 1.0:
        raise ValueError(f"inventory: command_density must be in [0, 1], got {command_density}")
    if not 1 <= n_items <= len(INVENTORY_ITEMS):
        raise ValueError(f"inventory: n_items must be in [1, {len(INVENTORY_ITEMS)}], got {n_items}")
    tasks = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        vocabulary = [str(x) for x in rng.choice(INVENTORY_ITEMS, size=n_items, replace=False)]
        chunks, n_commands = _stream(rng, n_chunks, words_per_chunk, command_density, vocabulary, adversarial_drops)
        final = inventory_states(chunks)[-1]
        tasks.append(
            Task(
                id=f"{prefix}-s{seed}-{n_chunks}x{words_per_chunk}-{i:05d}",
                kind="set",
                question=QUESTION,
                documents=chunks,
                answer=sorted(final),
                metadata={
                    "generator": "inventory",
                    "seed": seed,
                    "n_chunks": n_chunks,
                    "words_per_chunk": words_per_chunk,
                    "command_density": command_density,
                    "n_items": n_items,
                    "adversarial_drops": adversarial_drops,
                    "n_commands": n_commands,
                    "items": vocabulary,
                },
            )
        )
    return tasks
