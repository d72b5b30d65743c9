"""statelm: train chat LLMs to manage their own context (the StateLM / Pensieve idea)."""

__version__ = "0.1.0"
