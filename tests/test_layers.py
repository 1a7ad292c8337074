"""restar/ follows a model's life, and imports flow one way (docs/index.md, Layout):

    cli  >  report  >  training | serving | batch  >  model  >  data  >  top-level helpers

A module imports only from its own subpackage or a layer below; training, serving and batch do not
import each other. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "restar"
LAYERS = {
    "": 0,  # labels, config, errors, output_files, progress, tracking
    "data": 1,
    "model": 2,
    "training": 3,
    "serving": 3,
    "batch": 3,
    "report": 4,
    "cli": 5,
    "__main__": 6,  # python -m restar: runs the CLI
}
# Kept at the old path so that versions registered before the move still load (see its docstring).
COMPATIBILITY_ALIASES = {"restar.pyfunc"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def subpackage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and (PACKAGE / f"{parts[1]}.py").is_file() and parts[1] != "__main__":
        return ""
    return parts[1] if len(parts) > 1 else ""


def restar_imports(path: Path) -> set[str]:
    """Every restar module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("restar."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "restar":
            for alias in node.names:  # `from restar.model import inference` imports a module
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").is_file()
                found.add(candidate if is_module else node.module)
    return {name for name in found if name != "restar"}


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: restar_imports(path) for name, path in MODULES.items() if name not in COMPATIBILITY_ALIASES}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_from_its_own_layer_or_below(module: str) -> None:
    own = subpackage(module)
    wrong = sorted(
        imported
        for imported in GRAPH[module]
        if subpackage(imported) != own
        and (
            LAYERS[subpackage(imported)] > LAYERS[own]
            or (LAYERS[subpackage(imported)] == LAYERS[own] and own != "")
        )
    )
    assert not wrong, f"{module} ({own or 'top'}) imports from a layer above or beside it: {wrong}"


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each cycle a depth-first walk of `graph` runs into, as 'a -> b -> a'."""
    done: set[str] = set()
    cycles: list[str] = []

    def visit(module: str, trail: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in trail:
                cycles.append(" -> ".join([*trail[trail.index(imported) :], imported]))
            elif imported not in done:
                visit(imported, [*trail, imported])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return cycles


def test_no_import_cycles() -> None:
    """No module reaches itself through its imports (the inference/ONNX circle stays gone)."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert not import_cycles(GRAPH), "\n".join(import_cycles(GRAPH))


def test_every_subpackage_has_a_layer() -> None:
    assert {subpackage(module) for module in MODULES} <= set(LAYERS)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The rule is not vacuous: a model module importing from serving is reported."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def f():\n    from restar.serving.serve_local import ServerSpec\n")
    imported = restar_imports(wrong)
    assert imported == {"restar.serving.serve_local"}
    assert LAYERS[subpackage(next(iter(imported)))] > LAYERS["model"]
