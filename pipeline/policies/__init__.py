"""Policies: the scripted expert, a local HF model, and an OpenAI-compatible chat client.

Build one from a recipe with `pipeline.policies.factory.make_policy`; the HF and OpenAI modules are
imported only when asked for, since they pull in torch or an HTTP client.
"""

from pipeline.policies.base import Message, Policy

__all__ = ["Message", "Policy"]
