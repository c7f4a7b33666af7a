"""PyAV loaded only by a process that decodes or encodes.

aiortc imports PyAV (and with it every FFmpeg library: ~25 MiB of a node's resident memory) at
import time, yet a node that only forwards encoded media (WHIP ingest tapped, WHEP viewers fed
pre-packed frames) never calls it. While ``aiortc``'s package executes, its ``import av`` /
``from av.x import Name`` statements get stand-ins: stub modules whose attributes are
``Deferred`` classes. A stand-in loads the real PyAV on first real use (a call such as
``av.CodecContext.create(...)``, ``AudioFrame(...)``, an attribute), and answers ``isinstance``
without loading it: no PyAV object can exist before PyAV is loaded, so the answer is False until
then. Outside that window every ``import av`` (the mixer, the bridge, bench anchors) is the real
one, and a process that imported PyAV before aiortc gets aiortc with the real PyAV.

``install`` puts the finder on ``sys.meta_path``; ``relay/__init__.py`` calls it, so it is in
place before any aiortc import of ours (third-party imports sort before first-party ones in a
module, so the hook must live in the package's ``__init__``). aiortc's use of PyAV at import time
is pinned by ``tests/unit/test_deferred_imports.py``: it fails if an upgrade starts needing the
real PyAV while its modules execute, or if the node loads it anyway.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

DEFERRED = "av"
"""The package whose import is deferred."""
WINDOW = "aiortc"
"""The package during whose execution ``DEFERRED`` imports get stand-ins."""


def _real(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


class _DeferredMeta(type):
    """A stand-in class for ``module.name``: calls and attributes load the real one;
    ``isinstance`` and ``issubclass`` do not load PyAV (nothing can be an instance before)."""

    _module: str
    _name: str

    def _resolve(cls) -> Any:
        return _real(cls._module, cls._name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._resolve()(*args, **kwargs)

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(cls._resolve(), attr)

    def __instancecheck__(cls, obj: object) -> bool:
        if not loaded():
            return False
        real = cls._resolve()
        return isinstance(real, type) and isinstance(obj, real)

    def __subclasscheck__(cls, sub: type) -> bool:
        if not loaded():
            return False
        real = cls._resolve()
        return isinstance(real, type) and issubclass(sub, real)

    def __repr__(cls) -> str:
        return f"<deferred {cls._module}.{cls._name}>"


def deferred(module: str, name: str) -> type:
    """The stand-in class for ``module.name``."""
    return _DeferredMeta(name, (), {"_module": module, "_name": name, "__module__": module})


def loaded() -> bool:
    """Whether the real PyAV is in this process."""
    module = sys.modules.get(DEFERRED)
    return module is not None and not isinstance(module, _StubModule)


class _StubModule(types.ModuleType):
    """A stand-in for a PyAV module, bound in aiortc's globals: inside the window an attribute
    is a ``deferred`` class; afterwards it is the real module's attribute (PyAV loads)."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if isinstance(sys.modules.get(self.__name__), _StubModule):
            value = deferred(self.__name__, attr)
            setattr(self, attr, value)
            return value
        return _real(self.__name__, attr)


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []  # a package: ``from av.frame import Frame`` imports a submodule
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _WindowLoader(importlib.abc.Loader):
    """The real loader of the ``WINDOW`` package; while it executes, the finder hands out
    stubs, and on the way out they leave ``sys.modules`` (aiortc's globals keep them)."""

    def __init__(self, finder: DeferredImports, loader: Any) -> None:
        self._finder = finder
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self._finder.window = True
        try:
            self._loader.exec_module(module)
        finally:
            self._finder.window = False
            for name in [n for n, m in sys.modules.items() if isinstance(m, _StubModule)]:
                del sys.modules[name]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)  # resource readers, get_code, is_package


class DeferredImports(importlib.abc.MetaPathFinder):
    """Serves PyAV stubs to aiortc while its package executes (see the module docstring)."""

    def __init__(self) -> None:
        self.window = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if self.window and (fullname == DEFERRED or fullname.startswith(DEFERRED + ".")):
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        if fullname != WINDOW or self.window or DEFERRED in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        spec.loader = _WindowLoader(self, spec.loader)
        return spec


def install() -> None:
    """Defer PyAV for aiortc in this process (idempotent; a no-op once aiortc is imported)."""
    if WINDOW in sys.modules or any(isinstance(f, DeferredImports) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, DeferredImports())
