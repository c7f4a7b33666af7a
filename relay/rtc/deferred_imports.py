"""PyAV loaded only by a process that decodes or encodes; dnspython only when a peer offers an
mDNS (``.local``) candidate; uvicorn's command line and pydantic 1 only if something uses them.

aiortc imports PyAV (and with it every FFmpeg library: ~25 MiB of a node's resident memory) at
import time, yet a node that only forwards encoded media (WHIP ingest tapped, WHEP viewers fed
pre-packed frames) never calls it; aioice imports dnspython for its mDNS resolver (~2-5 MiB).
While ``aiortc``'s package executes, its ``import av`` / ``from av.x import Name`` statements
get stand-ins (and so do aioice's ``from . import mdns``): stub modules whose attributes are
``deferred`` classes. A stand-in loads the real module on first real use (a call such as
``av.CodecContext.create(...)``, ``AudioFrame(...)``, an attribute), and answers ``isinstance``
without loading it: no PyAV object can exist before PyAV is loaded, so the answer is False until
then. aioice's ``mdns.is_mdns_hostname``, called for every remote candidate, answers a name
without ".local" itself. Outside those windows every import is the real one (the mixer, the
bridge, bench anchors), and a process that imported PyAV before aiortc keeps it.

uvicorn's package imports its command line (``uvicorn.main``: click, watchfiles, the reload
and multiprocess supervisors) to re-export ``run``, ``main`` and ``Server``: it gets a stand-in
too, whose ``Server`` is the real ``uvicorn.server.Server``. FastAPI imports pydantic 1 from a
function, only to ask ``isinstance``: ``BOUND`` binds a stand-in as ``pydantic.v1`` instead;
and FastAPI's own pydantic models (the OpenAPI document's) build on first use
(``BUILD_ON_USE``).

``install`` puts the finder on ``sys.meta_path``; ``relay/__init__.py`` calls it, so it is in
place before any aiortc import of ours (third-party imports sort before first-party ones in a
module, so the hook must live in the package's ``__init__``). The stand-ins are pinned by
``tests/live/test_startup_imports.py`` (a fresh interpreter each): it fails if an upgrade starts
needing the real modules while the packages execute, or if a node loads them anyway.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

WINDOWS: dict[str, str] = {
    "aiortc": "av",
    "aioice": "aioice.mdns",
    "uvicorn": "uvicorn.main",
}
"""While the key package executes, imports of the value (and its submodules) get stand-ins:
PyAV for aiortc (~25 MiB), aioice's mDNS module (dnspython, ~5 MiB: only needed to resolve a
peer's ``.local`` candidate) for aioice, and uvicorn's command line for uvicorn (click,
watchfiles, the reloader and multiprocess supervisors, multiprocessing: ~1.5 MiB that a node
started by our own CLI, which builds ``uvicorn.config.Config`` and ``uvicorn.server.Server``
itself, never runs)."""


REEXPORTS: dict[str, dict[str, str]] = {"uvicorn.main": {"Server": "uvicorn.server"}}
"""Names a deferred module re-exports from a module that loads anyway: the stand-in gives the
real object (``uvicorn.Server`` is a class others subclass, which a stand-in cannot be)."""

BOUND: dict[str, tuple[str, ...]] = {"pydantic.v1": ("BaseModel",)}
"""Modules a library imports from a function, only to ask ``isinstance``: FastAPI runs ``from
pydantic import v1`` for every route it builds and every response it encodes, to tell pydantic
1 models apart (~30 modules, ~1.4 MiB). A stand-in bound as the parent package's attribute (not
in ``sys.modules``: ``import pydantic.v1`` still loads the real one and rebinds it) answers for
the named classes without loading it; any other attribute loads the real module."""


BUILD_ON_USE: tuple[str, ...] = ("fastapi",)
"""Packages whose pydantic models build their validators and serializers on first use
(``defer_build``): FastAPI defines ~50 models for the OpenAPI document (and security schemes)
that a node builds only if ``/openapi.json`` or ``/docs`` is asked for (~1.3 MiB)."""


def _real(module: str, name: str) -> Any:
    parent, _, child = module.rpartition(".")
    holder = sys.modules.get(parent)
    kept = holder.__dict__.get(child) if holder is not None else None
    real = importlib.import_module(module)
    if holder is not None and isinstance(kept, _DeferredMeta):
        # importing ``uvicorn.main`` binds the module as ``uvicorn.main``, where uvicorn's
        # package keeps its command (``from uvicorn.main import main``): the stand-in stays
        setattr(holder, child, kept)
    return getattr(real, name)


def _root(module: str) -> str:
    roots = (*WINDOWS.values(), *BOUND)
    return next(r for r in roots if module == r or module.startswith(r + "."))


class _DeferredMeta(type):
    """A stand-in class for ``module.name``: calls and attributes load the real one;
    ``isinstance`` and ``issubclass`` do not load its package (nothing can be an instance
    before)."""

    _module: str
    _name: str
    _root: str

    def _resolve(cls) -> Any:
        return _real(cls._module, cls._name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._resolve()(*args, **kwargs)

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(cls._resolve(), attr)

    def __instancecheck__(cls, obj: object) -> bool:
        if not loaded(cls._root):  # aiortc's senders ask once per frame
            return False
        real = cls._resolve()
        return isinstance(real, type) and isinstance(obj, real)

    def __subclasscheck__(cls, sub: type) -> bool:
        if not loaded(cls._root):
            return False
        real = cls._resolve()
        return isinstance(real, type) and issubclass(sub, real)

    def __repr__(cls) -> str:
        return f"<deferred {cls._module}.{cls._name}>"


def deferred(module: str, name: str) -> type:
    """The stand-in class for ``module.name``."""
    attrs = {"_module": module, "_name": name, "_root": _root(module), "__module__": module}
    return _DeferredMeta(name, (), attrs)


def loaded(module: str = "av") -> bool:
    """Whether the real ``module`` (PyAV by default) is in this process."""
    found = sys.modules.get(module)
    return found is not None and not isinstance(found, _StubModule)


def _is_mdns_hostname(name: str) -> bool:
    """aioice's check, which matches ``[a-zA-Z0-9-]{1,63}\\.local``: a name without ".local"
    is answered without loading dnspython."""
    return ".local" in name and bool(_real("aioice.mdns", "is_mdns_hostname")(name))


class _StubModule(types.ModuleType):
    """A stand-in for a deferred module, bound in its window package's globals: inside the
    window an attribute is a ``deferred`` class; afterwards it is the real module's attribute
    (the real module loads)."""

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
        if spec.name == "aioice.mdns":  # called for every remote candidate
            module.is_mdns_hostname = _is_mdns_hostname  # type: ignore[attr-defined]
        for name, source in REEXPORTS.get(spec.name, {}).items():
            setattr(module, name, _real(source, name))
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _bind_stand_in(package: types.ModuleType, module: str) -> None:
    child = module.rpartition(".")[2]
    if module in sys.modules or child in package.__dict__:
        return
    stand_in = _StubModule(module)
    for name in BOUND[module]:
        setattr(stand_in, name, deferred(module, name))
    setattr(package, child, stand_in)


class _WrappedLoader(importlib.abc.Loader):
    """A package's real loader, for a subclass to run something around its ``exec_module``."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)  # resource readers, get_code, is_package


class _BindingLoader(_WrappedLoader):
    """The real loader of a package named in ``BOUND``; binds the stand-ins once it has run."""

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        for name in BOUND:
            if name.rpartition(".")[0] == module.__name__:
                _bind_stand_in(module, name)


class _BuildOnUseLoader(_WrappedLoader):
    """The real loader of a ``BUILD_ON_USE`` package: every pydantic model defined while it
    executes inherits ``defer_build`` (pydantic merges a model's config with its bases')."""

    def exec_module(self, module: types.ModuleType) -> None:
        config = importlib.import_module("pydantic").BaseModel.model_config
        before = config.get("defer_build")
        config["defer_build"] = True
        try:
            self._loader.exec_module(module)
        finally:
            if before is None:
                config.pop("defer_build", None)
            else:
                config["defer_build"] = before


class _WindowLoader(_WrappedLoader):
    """The real loader of a ``WINDOWS`` package; while it executes, the finder hands out
    stubs for its deferred module, and on the way out they leave ``sys.modules`` (the
    package's globals keep them)."""

    def __init__(self, finder: DeferredImports, package: str, loader: Any) -> None:
        super().__init__(loader)
        self._finder = finder
        self._package = package

    def exec_module(self, module: types.ModuleType) -> None:
        root = WINDOWS[self._package]
        self._finder.open.add(root)
        try:
            self._loader.exec_module(module)
        finally:
            self._finder.open.discard(root)
            for name, found in list(sys.modules.items()):
                if isinstance(found, _StubModule) and _root(name) == root:
                    del sys.modules[name]


class DeferredImports(importlib.abc.MetaPathFinder):
    """Serves stubs of a deferred module while its window package executes (see the module
    docstring)."""

    def __init__(self) -> None:
        self.open: set[str] = set()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if any(fullname == r or fullname.startswith(r + ".") for r in self.open):
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        root = WINDOWS.get(fullname)
        binds = any(name.rpartition(".")[0] == fullname for name in BOUND)
        builds = fullname in BUILD_ON_USE
        if not (binds or builds) and (root is None or root in self.open or root in sys.modules):
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
        if builds:
            spec.loader = _BuildOnUseLoader(spec.loader)
        elif binds:
            spec.loader = _BindingLoader(spec.loader)
        else:
            spec.loader = _WindowLoader(self, fullname, spec.loader)
        return spec


def install() -> None:
    """Defer PyAV for aiortc and dnspython for aioice in this process (idempotent; a package
    already imported keeps what it imported)."""
    if any(isinstance(f, DeferredImports) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, DeferredImports())
    for name in BOUND:
        package = sys.modules.get(name.rpartition(".")[0])
        if package is not None:  # imported before relay: bind now
            _bind_stand_in(package, name)
