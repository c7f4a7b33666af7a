"""No import circles among our own modules (imports inside functions count: a circle hidden in a
function is still two modules that cannot be understood apart)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_import_contract import ROOT, imports_in, module_name

PACKAGES = ("relay", "gateway")


def import_graph() -> dict[str, set[str]]:
    modules = {
        module_name(path): path for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, imported in imports_in(path):
            if imported in modules and imported != name and not name.startswith(imported + "."):
                targets.add(imported)  # a module imports its package's __init__: not a circle
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_a_circle_through_a_function_level_import_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_the_graph_sees_our_modules() -> None:
    graph = import_graph()
    assert "gateway.stage.room" in graph["gateway.anchors"]
    assert "gateway.mixer.planes" in graph["gateway.mixer.swscale"]
    assert Path(ROOT / "gateway" / "stage" / "room.py").exists()
