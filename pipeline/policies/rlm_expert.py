"""The scripted RLM expert: writes the REPL code that solves generated tasks (NIAH, multi-hop, aggregation).

As the acting policy of an RLM episode it plays peek -> solve -> submit: it looks at `context`, runs
code that computes `result` (with regular expressions, or, when the episode has a sub-model, by
sending chunks to `llm_query_batched` and combining the replies), and submits `result` through the
`answer` dict in a later turn, so the REPL state must persist. It decides from the visible messages
alone (the question, the REPL outputs), never from the task's answer, so its trajectories are honest
demonstrations and an upper bound for the environment.

Given any other conversation (a sub-call: one user message), it answers the chunk prompts its own
code writes, by reading the chunk in the prompt: a scripted sub-model for tests and demos.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from pipeline.env.rlm import RLM_MARKER
from pipeline.policies.base import Message

NIAH = re.compile(r"special magic numbers? for (.+?) mentioned in the text")
MULTIHOP = re.compile(r"keeps the secret of (\w+)")
AGG_SUM = re.compile(r"total quantity of (\w+) that (\w+) bought across all orders")
AGG_COUNT = re.compile(r"How many orders did (\w+) place for (\w+) in the list")
RESULT = re.compile(r"^result = (.*)$", re.MULTILINE)
CHUNK_CHARS = 20_000
CHUNK_LINES = 400

# Prompts the expert's code sends to the sub-model, and how the scripted sub-model answers them.
SUB_NIAH = re.compile(r"^What is the special magic number for (\S+) in the text below\?")
SUB_SUM = re.compile(r"^What is the total quantity of (\w+) that (\w+) bought in the orders below\?")
SUB_COUNT = re.compile(r"^How many orders did (\w+) place for (\w+) in the orders below\?")
ORDER_LINE = r"^Order \d+ on day \d+: (\w+) bought (\d+) (\w+)\.$"


class ScriptedRLMExpert:
    """A policy that needs no model; deterministic given the messages."""

    name = "scripted_rlm"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds per call: a stand-in for a slow model in concurrency tests

    async def act(self, messages: list[Message], tools: list[dict[str, Any]], seed: int | None = None) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if messages and RLM_MARKER in str(messages[0].get("content", "")):
            return self.decide(messages)
        return answer_sub_prompt(str(messages[-1].get("content", "")) if messages else "")

    async def aclose(self) -> None:
        return None

    def decide(self, messages: list[Message]) -> str:
        task = str(messages[1]["content"])
        question = task.split("\n\n", 1)[0].removeprefix("Question: ")
        has_sub_model = "llm_query_batched runs up to" in task
        mine = [str(m["content"]) for m in messages if m["role"] == "assistant"]
        last_output = str(messages[-1]["content"]) if messages[-1]["role"] == "tool" else ""
        if not mine:
            return _message("First, a look at the input.", PEEK)
        if "# solve" not in mine[-1]:
            direct = not has_sub_model or "# solve: sub-calls" in "".join(mine)
            code = solve_code(question, use_sub_calls=not direct)
            return _message("Now compute the answer from the whole input.", code)
        found = RESULT.search(last_output)
        if found and found.group(1).strip() and "Traceback" not in last_output:
            return _message(f"The result is {found.group(1).strip()}; submitting it.", SUBMIT)
        if "# solve: sub-calls" in mine[-1]:  # the sub-model failed: solve with plain code instead
            return _message("The sub-calls did not give a result; searching directly.", solve_code(question, False))
        return _message("No result found; submitting that.", GIVE_UP)


PEEK = """# peek
print(type(context).__name__, len(context), "characters,", context.count("\\n") + 1, "lines")
print(context[:300])"""

SUBMIT = """answer["content"] = result
answer["ready"] = True"""

GIVE_UP = """answer["content"] = "unknown"
answer["ready"] = True"""


def solve_code(question: str, use_sub_calls: bool) -> str:
    """Code that leaves the answer in `result` and prints `result = ...`."""
    if m := NIAH.search(question):
        keys = [k.strip() for k in m.group(1).split(",") if k.strip()]
        return _niah_sub_calls(keys) if use_sub_calls else _niah_direct(keys)
    if m := MULTIHOP.search(question):
        return _multihop(m.group(1))
    if m := AGG_SUM.search(question):
        return _aggregation(m.group(2), m.group(1), "sum", use_sub_calls)
    if m := AGG_COUNT.search(question):
        return _aggregation(m.group(1), m.group(2), "count", use_sub_calls)
    return '# solve: unknown task\nresult = ""\nprint("result =", result)'


def _niah_direct(keys: list[str]) -> str:
    return f"""# solve: direct
import re
keys = {keys!r}
found = {{}}
for key in keys:
    hits = re.findall(r"special magic number for " + re.escape(key) + r" is (\\d+)", context)
    print(key, "->", hits)
    if hits:
        found[key] = hits[0]
result = ", ".join(found[key] for key in keys if key in found)
print("result =", result)"""


def _niah_sub_calls(keys: list[str]) -> str:
    return f"""# solve: sub-calls
keys = {keys!r}
size, overlap = {CHUNK_CHARS}, 300
chunks = [context[i : i + size + overlap] for i in range(0, len(context), size)]
jobs = [(key, chunk) for key in keys for chunk in chunks if key in chunk]
print(len(chunks), "chunks;", len(jobs), "mention a key")
ask = "What is the special magic number for {{}} in the text below? Reply with the number only, or NONE."
prompts = [ask.format(key) + "\\n\\n" + chunk for key, chunk in jobs]
replies = llm_query_batched(prompts)
found = {{}}
for (key, _), reply in zip(jobs, replies):
    print(key, "->", reply)
    if reply.strip().isdigit():
        found.setdefault(key, reply.strip())
result = ", ".join(found[key] for key in keys if key in found)
print("result =", result)"""


def _multihop(person: str) -> str:
    return f"""# solve: direct
import re
hop1 = re.search(r"secret of {person} is kept under the codeword ([\\w-]+)", context)
codeword = hop1.group(1) if hop1 else None
print("codeword:", codeword)
hop2 = re.search(r"value behind the codeword " + re.escape(codeword) + r" is (\\d+)", context) if codeword else None
result = hop2.group(1) if hop2 else ""
print("result =", result)"""


def _aggregation(person: str, item: str, mode: str, use_sub_calls: bool) -> str:
    if use_sub_calls:
        ask = (
            f"What is the total quantity of {item} that {person} bought in the orders below?"
            if mode == "sum"
            else f"How many orders did {person} place for {item} in the orders below?"
        )
        return f"""# solve: sub-calls
lines = context.split("\\n")
chunks = ["\\n".join(lines[i : i + {CHUNK_LINES}]) for i in range(0, len(lines), {CHUNK_LINES})]
prompts = [{ask!r} + " Reply with a number only.\\n\\n" + chunk for chunk in chunks]
replies = llm_query_batched(prompts)
print(len(chunks), "chunks, replies:", replies)
bad = [r for r in replies if not r.strip().isdigit()]
result = "" if bad else str(sum(int(r.strip()) for r in replies))
print(len(bad), "replies are not numbers")
print("result =", result)"""
    combine = "sum(int(qty) for _, qty, _ in matching)" if mode == "sum" else "len(matching)"
    return f"""# solve: direct
import re
orders = re.findall(r"{ORDER_LINE}", context, re.MULTILINE)
matching = [order for order in orders if order[0] == {person!r} and order[2] == {item!r}]
print(len(orders), "orders,", len(matching), "by {person} for {item}:", matching[:5])
result = str({combine})
print("result =", result)"""


def _message(thought: str, code: str) -> str:
    return f"{thought}\n\n```python\n{code}\n```"


def answer_sub_prompt(prompt: str) -> str:
    """The scripted sub-model: answers the chunk prompts of `solve_code` from the chunk in the prompt."""
    if m := SUB_NIAH.search(prompt):
        hit = re.search(rf"special magic number for {re.escape(m.group(1))} is (\d+)", prompt)
        return hit.group(1) if hit else "NONE"
    if (m := SUB_SUM.search(prompt)) or (m := SUB_COUNT.search(prompt)):
        if m.re is SUB_SUM:
            item, person = m.group(1), m.group(2)
        else:
            person, item = m.group(1), m.group(2)
        orders = [o for o in re.findall(ORDER_LINE, prompt, re.MULTILINE) if o[0] == person and o[2] == item]
        return str(sum(int(q) for _, q, _ in orders) if m.re is SUB_SUM else len(orders))
    return "I can only answer the prompts of the scripted RLM expert."
