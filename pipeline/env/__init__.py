"""Environments in which a model manages its own context (SPEC 2)."""
