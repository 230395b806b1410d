"""The package's import layering, as DESIGN.md draws it: checked on the source, so a reach-through fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import inferd

PACKAGE = Path(inferd.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the inferd modules a source file imports (relative imports resolved)."""
    module = ".".join(("inferd", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n == "inferd" or n.startswith("inferd.")}


def _attribute_reads(path: Path, attribute: str) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr == attribute]


def test_front_doors_reach_the_core_only_through_the_server() -> None:
    """No front-door module imports the manager, a scheduler, a backend or an instance, nor reads `.manager`."""
    forbidden = ("inferd.manager", "inferd.scheduling", "inferd.backends", "inferd.instances")
    problems = []
    for path in sorted((PACKAGE / "frontends").rglob("*.py")):
        for name in _imports(path):
            if name.startswith(forbidden):
                problems.append(f"{path.relative_to(PACKAGE)} imports {name}")
        for line in _attribute_reads(path, "manager"):
            problems.append(f"{path.relative_to(PACKAGE)}:{line} reads .manager")
    assert problems == []


def test_every_inference_of_a_front_door_enters_the_pipeline() -> None:
    """Front doors run requests only through `Server.infer_request` (the pipeline), never a scheduler directly."""
    for path in sorted((PACKAGE / "frontends").rglob("*.py")):
        tree = ast.parse(path.read_text())
        calls = {node.func.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        assert not calls & {"run_sync", "execute", "make_job", "infer_request_sync"}, path


def test_lower_layers_do_not_import_upper_ones() -> None:
    rules = {
        "backends": ("inferd.repository", "inferd.frontends", "inferd.pipeline", "inferd.server", "inferd.manager"),
        "scheduling": ("inferd.frontends", "inferd.pipeline", "inferd.server", "inferd.manager",
                       "inferd.repository"),
        "pipeline": ("inferd.frontends", "inferd.server"),
        "gateway": ("inferd.frontends", "inferd.server", "inferd.manager", "inferd.scheduling", "inferd.backends",
                    "inferd.instances"),
        "compat": ("inferd.frontends", "inferd.server", "inferd.pipeline"),
        "repository": ("inferd.backends", "inferd.frontends", "inferd.server", "inferd.pipeline"),
    }
    problems = []
    for folder, forbidden in rules.items():
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            problems += [f"{path.relative_to(PACKAGE)} imports {name}" for name in _imports(path)
                         if name.startswith(forbidden)]
    for name in ("types.py", "archives.py", "paths.py", "_version.py"):
        problems += [f"{name} imports {n}" for n in _imports(PACKAGE / name)
                     if n not in ("inferd.paths", "inferd.types") and not n.startswith("inferd.paths.")]
    assert problems == []
