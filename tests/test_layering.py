"""geovq's layers point down: no import cycle among its modules, and only the entry point and the
stages import a stage.

Every module is read with ``ast`` (nothing is imported), and every import statement counts, at
the top of a module or inside a function: an import moved into a function to dodge a cycle is
still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import geovq

PACKAGE = Path(geovq.__file__).resolve().parent
# The only modules that may import geovq.stages: the entry point and the stages themselves.
STAGE_USERS = ("geovq.train", "geovq.stages")


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("geovq", *path.relative_to(PACKAGE).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def imported(module: str, path: Path) -> set[str]:
    """The geovq modules ``module`` imports anywhere in its file: the module an import names, and
    the submodules a ``from package import name`` names."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, when it is one
    return {target for target in targets if target in MODULES and target != module}


GRAPH = {module: imported(module, path) for module, path in MODULES.items()}


def is_stage_user(module: str) -> bool:
    return any(module == allowed or module.startswith(allowed + ".") for allowed in STAGE_USERS)


def test_the_walk_sees_the_package():
    assert {"geovq.train", "geovq.stages", "geovq.stages.pipeline", "geovq.study.runner"} <= MODULES.keys()
    assert "geovq.stages" in GRAPH["geovq.train"]  # the entry point's import inside run_stage counts
    assert "geovq.study.spec" in GRAPH["geovq.study.runner"]


def test_only_the_entry_point_and_the_stages_import_a_stage():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not is_stage_user(module)
        for target in targets
        if target == "geovq.stages" or target.startswith("geovq.stages.")
    )
    assert not upward, "layers point down; move what these need below geovq.stages:\n" + "\n".join(upward)


def test_no_import_cycle():
    state: dict[str, str] = {}
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                cycles.append(" -> ".join(cycle))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
