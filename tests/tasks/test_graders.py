"""Graders: exact, multiple choice, set, and the LLM judge (injected callable and a loopback server)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from pipeline.tasks.graders import (
    JudgeConfig,
    JudgeNotConfiguredError,
    agrade,
    build_judge_prompt,
    choice_letter,
    grade,
    normalize_answer,
    parse_verdict,
)
from pipeline.tasks.schema import Task


def task(kind: str, answer, **extra) -> Task:
    return Task(id=f"t-{kind}", kind=kind, question="What is it?", documents=["text"], answer=answer, **extra)


MC = task("multiple_choice", "B", choices=["9", "11", "12", "2"])


def test_normalize_is_squad_style():
    assert normalize_answer("  The  Eiffel-Tower!! ") == "eiffeltower"
    assert normalize_answer("An apple, a day") == "apple day"


@pytest.mark.parametrize(
    ("answer", "right"),
    [("paris", True), ("The Paris.", True), ("PARIS!", True), ("Lyon", True), ("Paris, France", False), ("", False)],
)
def test_exact_accepts_any_listed_answer(answer, right):
    assert grade(task("exact", ["Paris", "Lyon"]), answer) is right


@pytest.mark.parametrize(
    "answer", ["B", "b", "(B)", "B.", "B) 11", "(B) 11", "B. 11", "Answer: B", "The answer is (B).", "11", "**B**"]
)
def test_multiple_choice_accepts_usual_forms(answer):
    assert grade(MC, answer)


@pytest.mark.parametrize("answer", ["A", "(C)", "12", "Answer: D", "I am not sure", "", "E", "The answer is 11 or 12"])
def test_multiple_choice_rejects_other_or_unclear_answers(answer):
    assert not grade(MC, answer)


def test_multiple_choice_letters_out_of_range_and_gold_as_text():
    assert choice_letter("D", ["Yes", "No"]) is None
    assert grade(task("multiple_choice", "11", choices=["9", "11"]), "B")  # gold stored as option text


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("111, 222 and 333", True),
        ("333\n222\n111", True),
        ("- 111\n- 222\n- 333", True),
        ("1. 111\n2. 222\n3. 333", True),
        ("111; 222; 333.", True),
        ("111, 222", False),
        ("111, 222, 333, 444", False),
    ],
)
def test_set_compares_items_as_sets(answer, right):
    assert grade(task("set", ["111", "222", "333"]), answer) is right


def test_set_keeps_gold_items_with_and_whole():
    gold = task("set", ["salt and pepper", "olive oil"])
    assert grade(gold, "Olive oil, salt and pepper")
    assert not grade(gold, "salt, pepper")


@pytest.mark.parametrize("kind", ["exact", "set", "judge"])
def test_none_answer_is_always_wrong(kind):
    assert grade(task(kind, "x"), None) is False
    assert grade(MC, None) is False


def test_judge_without_judge_raises_clearly():
    with pytest.raises(JudgeNotConfiguredError, match="kind 'judge' but no judge is configured"):
        grade(task("judge", "x"), "x")


def test_judge_prompt_carries_question_gold_response_and_guidance():
    judged = task("judge", "the cello", metadata={"judge_guidance": "Off by one is fine."})
    prompts: list[str] = []

    def judge(prompt: str) -> str:
        prompts.append(prompt)
        return "Yes."

    assert grade(judged, "  I have been learning the cello. ", judge) is True
    (prompt,) = prompts
    assert "What is it?" in prompt and "the cello" in prompt
    assert "I have been learning the cello." in prompt and "Off by one is fine." in prompt
    assert "any of: a; b" in build_judge_prompt(task("judge", ["a", "b"]), "a")


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("yes", True),
        ("Yes.", True),
        ("**No**", False),
        ("no, the response names a different city", False),
        ("<think>at first yes, but</think>\nNo", False),
        ("reasoning that never closed the tag... </think> yes", True),
        ("I cannot decide", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_unparseable_judge_reply_is_wrong():
    assert grade(task("judge", "x"), "x", lambda prompt: "maybe") is False


def test_agrade_with_async_judge_and_grade_refuses_it():
    async def judge(prompt: str) -> str:
        return "yes"

    assert asyncio.run(agrade(task("judge", "x"), "x", judge)) is True
    assert asyncio.run(agrade(MC, "B")) is True
    with pytest.raises(TypeError, match="use agrade"):
        grade(task("judge", "x"), "x", judge)


class _FakeChatServer(BaseHTTPRequestHandler):
    """Minimal OpenAI-compatible /v1/chat/completions: says yes iff the response mentions 'Lima'."""

    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, **body})
        prompt = body["messages"][-1]["content"]
        response_part = prompt.split("Model response:")[1]
        reply = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "yes" if "Lima" in response_part else "no"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = HTTPServer(("127.0.0.1", 0), _FakeChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeChatServer.requests.clear()
    yield JudgeConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="judge-model", max_retries=0)
    server.shutdown()
    server.server_close()


def test_judge_over_a_loopback_openai_compatible_server(judge_server):
    capital = task("judge", "Lima")
    assert grade(capital, "It is Lima.", judge_server) is True
    assert grade(capital, "It is Cusco.", judge_server) is False
    assert asyncio.run(agrade(capital, "Lima, Peru", judge_server)) is True
    first = _FakeChatServer.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["model"] == "judge-model"
    assert first["temperature"] == 0.0 and "Correct answer:\nLima" in first["messages"][0]["content"]


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("KTV-2291", True),
        ("ktv-2291", True),
        ("KTV 2291", True),
        ("KTV2291.", True),
        ("KTV-2292", False),
        ("KTV-2291-B", False),
        ("The code is KTV-2291.", False),
    ],
)
def test_exact_accepts_every_code_spelling(answer, right):
    assert grade(task("exact", "KTV-2291"), answer) is right


def test_every_generated_value_shape_grades_its_own_value_right_and_others_wrong():
    from pipeline.tasks.generators import generate_niah

    tasks = generate_niah(30, 50, 50, seed=4, templates="train") + generate_niah(
        10, 80, 80, n_needles=3, seed=4, templates="train"
    )
    assert {t.metadata["value_shape"] for t in tasks} == {"number", "code"}
    for t in tasks:
        right = t.answer if t.kind == "exact" else ", ".join(reversed(t.answer))
        assert grade(t, right) and grade(t, right.lower()) and grade(t, f"{right}.")
        wrong = "1000000" if t.kind == "exact" else ", ".join(t.answer[:-1])
        assert not grade(t, wrong)


def test_set_of_codes_ignores_code_spacing():
    gold = task("set", ["QX-4471", "ZP-1102"])
    assert grade(gold, "zp 1102 and QX4471")
    assert not grade(gold, "QX-4471")
