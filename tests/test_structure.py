"""The shape of the code, checked from its source: no import cycle in server/ or pipelines/ (imports
inside functions and type-only ones included), and no module but server/sessions.py writes a
session's state."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "pipelines")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, wherever the import statement is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = (base or "").rstrip(".")
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in known else base)
    return {module for module in out if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_server_or_pipelines():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert graph["server.app"] and graph["pipelines.img2img"]  # the check sees imports at all
    assert cycles(graph) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def session_fields() -> set[str]:
    """The attributes a Session sets in its __init__."""
    tree = ast.parse((REPO_ROOT / "server" / "sessions.py").read_text())
    session = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Session")
    init = next(node for node in session.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    return {
        target.attr
        for node in ast.walk(init)
        for target in getattr(node, "targets", [getattr(node, "target", None)])
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    }


def test_only_the_session_manager_writes_a_sessions_state():
    """Outside server/sessions.py, nothing assigns to `session.<field>` or `source.<field>` (or to
    their fields' fields), nor sets or fills a session's `ended` event or outbox."""
    fields = session_fields()
    assert {"pending", "streams", "closed", "frame_requested", "outbox", "ended"} <= fields
    writes = []
    for name, path in modules().items():
        if name == "server.sessions":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "set", "put", "put_nowait", "clear",
            ):
                targets = [node.func.value]
            for target in targets:
                chain = target
                while isinstance(chain, ast.Attribute) and isinstance(chain.value, ast.Attribute):
                    chain = chain.value
                if (
                    isinstance(chain, ast.Attribute)
                    and isinstance(chain.value, ast.Name)
                    and chain.value.id in ("session", "source")
                    and chain.attr in fields
                ):
                    writes.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert writes == []
