"""Fixtures for environment tests: the tiny model's tokenizer and small environments."""

from __future__ import annotations

import pytest

from pipeline.env.parsing import format_assistant_text
from pipeline.env.pensieve import EnvConfig, PensieveEnv


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def make_env(tokenizer):
    """Build a Pensieve env over a small text; keyword arguments go to EnvConfig."""

    def build(text: str = "", question: str = "What is the code?", **config) -> PensieveEnv:
        text = text or " ".join(f"Sentence number {i} talks about item{i}." for i in range(400))
        return PensieveEnv(question, text, tokenizer, EnvConfig(**config))

    return build


def call(name: str, **arguments) -> str:
    """Raw assistant text calling one tool, as Qwen3 writes it."""
    return format_assistant_text("", [{"name": name, "arguments": arguments}])


def calls(*pairs: tuple[str, dict]) -> str:
    return format_assistant_text("", [{"name": n, "arguments": a} for n, a in pairs])


@pytest.fixture(scope="module")
def make_env_shared(tokenizer):
    """Like make_env, for hypothesis tests (function-scoped fixtures are not reset between examples)."""
    text = " ".join(f"Sentence number {i} talks about item{i}." for i in range(400))

    def build(**config) -> PensieveEnv:
        config.setdefault("max_rounds", 6)
        return PensieveEnv("What is the code?", text, tokenizer, EnvConfig(**config))

    return build
