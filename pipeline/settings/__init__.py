"""How every stage is configured and how it fails: recipes, the shared environment block, `--key value` overrides,
preflight checks and the one-paragraph errors a user sees (SPEC: CLI contract)."""
