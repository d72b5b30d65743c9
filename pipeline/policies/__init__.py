"""Policies: the scripted expert, a local HF model, and an OpenAI-compatible chat client."""

from pipeline.policies.base import Message, Policy

__all__ = ["Message", "Policy"]
