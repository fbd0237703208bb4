"""The stages import one way (shards -> loaders -> model -> train -> eval -> edit -> demo), and no modules import
each other, read from every module's source (function-level imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `common` sits below every stage; the top-level scripts (demo, its report page, bonus_1) above all of them.
STAGES = ("common", "shard_builder", "loaders", "model", "train", "eval", "edit", "demo")
TOP_LEVEL = {"demo": "demo", "report": "demo", "bonus_1": "demo", "quality": "demo"}


def _modules() -> dict[str, Path]:
    found = {name: REPO / f"{name}.py" for name in TOP_LEVEL if (REPO / f"{name}.py").is_file()}
    for stage in [*STAGES[:-1], *(name for name in TOP_LEVEL if (REPO / name).is_dir())]:
        for path in sorted((REPO / stage).rglob("*.py")):  # subpackages too (model.likelihoods)
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (`from pkg import name` counts as pkg.name when that is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            package = path.parent.name
            names.add(f"{package}.{node.module}" if node.module else package)
    return {name for name in names if name in modules}


def _stage(module: str) -> str:
    top = module.split(".")[0]
    return TOP_LEVEL.get(top, top)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_stage_imports_a_later_stage():
    backwards = [f"{module} imports {target}" for module, targets in _graph().items() for target in targets
                 if STAGES.index(_stage(target)) > STAGES.index(_stage(module))]
    assert not backwards, backwards


def test_no_import_cycles():
    graph = _graph()
    mutual = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())})
    assert not mutual, mutual
    # Longer cycles too: repeatedly drop modules that import nothing left; whatever remains is on a cycle.
    remaining = {name: set(targets) for name, targets in graph.items()}
    while True:
        leaves = {name for name, targets in remaining.items() if not targets & remaining.keys()}
        if not leaves:
            break
        for name in leaves:
            del remaining[name]
    assert not remaining, sorted(remaining)


def test_the_checks_see_a_backward_import(tmp_path):
    """The import reader is not blind: plain, from- and function-level imports all count (a from-import of a
    package also runs the package's __init__)."""
    source = tmp_path / "probe.py"
    source.write_text("import loaders\nfrom edit.common import EditError\n\ndef f():\n    from train import run\n")
    assert _imports(source, _modules()) == {"loaders", "edit.common", "train", "train.run"}
