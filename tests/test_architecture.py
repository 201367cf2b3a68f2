"""The package's layers import one way: commands -> daemon -> kernel -> compile -> plan/model -> values.

Every `import` in markroute/, also the ones inside functions, is checked against the table
below (docs/architecture.md explains it). A back-arrow or a cycle between layers fails here
with the module and the line, instead of creeping in unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "markroute"

BASE = {"values", "diagnostics", "exitcodes", "marks"}
# What each part may import besides itself; parts not named here are BASE.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "model": set(),
    "plan": set(),
    "match": {"model", "plan"},
    "probes": {"model"},
    "config": {"match", "model", "plan", "probes"},
    "compile": {"match", "model", "plan"},
    "sim": {"match", "model", "plan"},
    "kernel": {"compile", "match", "model", "plan"},
    "daemon": {"kernel", "compile", "match", "model", "plan", "probes"},
    "lab": {"lab", "kernel", "config", "compile", "model", "plan"},
    "commands": {"daemon", "kernel", "config", "compile", "sim", "lab", "match", "model", "plan"},
    "cli": {"commands"},
    "__main__": {"cli"},
    "": set(),  # markroute/__init__.py
}


def part_of(module: str) -> str:
    """The layer a dotted module name (without the leading 'markroute.') belongs to."""
    head = module.split(".")[0]
    return "base" if head in BASE else head


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module without 'markroute.') for every markroute import in a file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "markroute" or node.module.startswith("markroute.")):
                target = node.module.removeprefix("markroute").lstrip(".")
            else:
                continue
            if target:
                found.append((node.lineno, target))
            else:  # from markroute import x, y
                found += [(node.lineno, alias.name) for alias in node.names if alias.name != "__version__"]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name.removeprefix("markroute."))
                for alias in node.names
                if alias.name.startswith("markroute.")
            ]
    return found


def test_imports_run_one_way() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(module_name(path))
        assert source in ALLOWED, f"{path}: part '{source}' is missing from the layer table"
        for line, target in imports(path):
            dest = part_of(target)
            if dest not in (source, "base") and dest not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} imports {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_layer_table_has_no_cycle() -> None:
    seen: dict[str, int] = {}

    def visit(part: str, path: tuple[str, ...]) -> None:
        assert part not in path, f"cycle: {' -> '.join(path + (part,))}"
        for dest in ALLOWED.get(part, set()) - {part}:
            visit(dest, path + (part,))
        seen[part] = 1

    for part in ALLOWED:
        visit(part, ())
    assert set(seen) == set(ALLOWED)


def test_base_modules_import_only_base() -> None:
    for name in BASE:
        for line, target in imports(PACKAGE / f"{name}.py"):
            assert part_of(target) == "base", f"markroute/{name}.py:{line} imports {target}"
