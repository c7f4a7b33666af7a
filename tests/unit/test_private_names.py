"""aiortc's, aioice's and pylibsrtp's private names are reached only through relay/rtc/adapter.py
(and pylibsrtp's binding through relay/rtc/srtp_writer.py, rtp_reader.py and rtcp_reader.py), in
relay/, gateway/ and bench/ alike, so that tests/unit/test_aiortc_adapter.py's guards cover every
one of them.

A private attribute read or written on anything but ``self``/``cls`` outside those two modules must
be one our own code defines; a private module of those packages must not be imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEAM = {
    ROOT / "relay" / "rtc" / "adapter.py",
    ROOT / "relay" / "rtc" / "srtp_writer.py",
    ROOT / "relay" / "rtc" / "rtp_reader.py",
    ROOT / "relay" / "rtc" / "rtcp_reader.py",
}
FOREIGN = ("aiortc", "aioice", "pylibsrtp")


def sources() -> list[Path]:
    return sorted(p for top in ("relay", "gateway", "bench") for p in (ROOT / top).rglob("*.py"))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(tree: ast.AST) -> Iterator[str]:
    """Private names a module defines: functions, classes, attributes set on self/cls, fields."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                yield node.attr
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id  # dataclass fields
        elif isinstance(node, ast.Assign):
            yield from (t.id for t in node.targets if isinstance(t, ast.Name))


def private_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Private attributes reached on other objects, by attribute or by getattr/setattr/hasattr."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            yield node.lineno, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
        ):
            yield node.lineno, node.args[1].value


def foreign_private_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] in FOREIGN and any(is_private(p) for p in parts[1:]):
                yield node.lineno, name


def test_foreign_private_names_only_in_the_adapter() -> None:
    trees = {path: ast.parse(path.read_text(), str(path)) for path in sources()}
    ours = {  # the adapter's own definitions do not count: they may override aiortc's
        name
        for path, tree in trees.items()
        if path not in SEAM
        for name in defined_names(tree)
        if is_private(name)
    }
    found = []
    for path, tree in trees.items():
        if path in SEAM:
            continue
        where = path.relative_to(ROOT)
        found += [
            f"{where}:{line} .{name}" for line, name in private_uses(tree) if name not in ours
        ]
        found += [f"{where}:{line} import {name}" for line, name in foreign_private_imports(tree)]
    assert found == []


def test_the_check_sees_a_foreign_private_name() -> None:
    tree = ast.parse(
        "def f(dtls, viewer):\n"
        "    dtls.transport._connection.data_received = print\n"
        "    getattr(dtls, '_RTCDtlsTransport__state')\n"
        "    self._mine = 1\n"
        "from pylibsrtp._binding import ffi\n"
    )
    assert sorted(name for _, name in private_uses(tree)) == [
        "_RTCDtlsTransport__state",
        "_connection",
    ]
    assert [name for _, name in foreign_private_imports(tree)] == [
        "pylibsrtp._binding",
        "pylibsrtp._binding.ffi",
    ]
