"""The package's layers (README: Layout): stages do not import each other, data is pure data, the environment
plays without policies or training. A forbidden import anywhere in a file fails, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
STAGES = {"collect", "curate", "sft", "grpo", "evaluate", "demo"}
# what may run the stages by name: the registry and the command line
STAGE_RUNNERS = {"stages", "cli"}


def imports_of(path: Path) -> set[str]:
    """Every pipeline module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "pipeline":
                names.update(f"pipeline.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("pipeline.")}


def offenders(folder: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted(folder.rglob("*.py")):
        bad = sorted(name for name in imports_of(path) if name.startswith(forbidden))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_no_stage_imports_another_stage():
    stage_modules = tuple(f"pipeline.{name}" for name in STAGES)
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.stem in STAGE_RUNNERS:
            continue
        bad = sorted(n for n in imports_of(path) if n in stage_modules and n != f"pipeline.{path.stem}")
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    assert found == {}


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("data", ("pipeline.policies", "pipeline.play", "pipeline.training", "pipeline.reports")),
        ("env", ("pipeline.policies", "pipeline.play", "pipeline.training", "pipeline.settings", "pipeline.reports")),
        ("tasks", ("pipeline.policies", "pipeline.play", "pipeline.training", "pipeline.env", "pipeline.reports")),
    ],
)
def test_lower_layers_do_not_import_upper_ones(layer, forbidden):
    assert len(list((PACKAGE / layer).rglob("*.py"))) > 3
    assert offenders(PACKAGE / layer, forbidden + tuple(f"pipeline.{s}" for s in STAGES)) == {}


def test_the_checker_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipeline.play.rollout import collect\n")
    assert imports_of(module) == {"pipeline.play.rollout"}
