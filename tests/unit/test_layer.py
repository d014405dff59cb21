"""The Lambda layer carries only what the functions run: producers' and operators' code lives apart."""

import ast
from pathlib import Path

from tests.support import REPO

LAYER = REPO / "layers" / "callcancel" / "callcancel"
TOOLS = REPO / "tools" / "callcancel_tools"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_layer_imports_nothing_of_the_tools() -> None:
    # callcancel/__init__.py hands producers `callcancel.publish` and `callcancel.status` from the tools on first
    # use; no module the functions load does.
    for path in LAYER.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == LAYER:
            continue
        imported = _imports(path)
        assert not {name for name in imported if name.split(".")[0] in ("callcancel_tools", "rich")}, path


def test_every_layer_module_is_imported_by_a_function() -> None:
    # What no handler reaches does not belong in the layer.
    functions = [REPO / "functions" / name / "app.py" for name in ("cancel_worker", "nightly_purge", "dlq_digest")]
    reached: set[str] = set()
    pending = {name for path in functions for name in _imports(path) if name.startswith("callcancel")}
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        module = LAYER.parent / (name.replace(".", "/") + ".py")
        package = LAYER.parent / name.replace(".", "/") / "__init__.py"
        source = module if module.exists() else package
        if source.exists():
            pending |= {n for n in _imports(source) if n.startswith("callcancel.") or n == "callcancel"}
            if source == package:
                pending |= {f"{name}.{p.stem}" for p in source.parent.glob("*.py") if p.stem != "__init__"}
    modules = {
        ".".join(p.relative_to(LAYER.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in LAYER.rglob("*.py")
    }
    assert modules - reached == set()
    assert {p.stem for p in TOOLS.glob("*.py")} >= {"cli", "producer", "dlq", "locate", "outcome_record"}
