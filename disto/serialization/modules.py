"""Shipping the caller's own modules to the nodes that need them.

A class or function is pickled by reference (module and name), so a node can unpickle it only if it can import
its module. Installed packages and the standard library are there on every node; the modules of a user's own
project (``from myactors import Counter`` in ``proj/driver.py``) often are not. Those are *shippable*: loaded
from a ``.py`` file outside the interpreter's install paths (or shipped here themselves). While pickling, the
pickler notes which shippable modules a payload refers to; the node then sends their source to that peer once,
in a MODULES frame ahead of the message (frames on one connection arrive in order), together with the shippable
modules they import and their parent packages. The peer serves them from :class:`ShippedModules`, a finder at the
end of ``sys.meta_path``: a module the peer can import itself is imported as usual; only a missing one comes
from the shipped source, compiled under its original file name (and put in ``linecache``, so tracebacks show
its lines). A driver script's own source (``__main__``, whose classes cloudpickle sends by value) travels the
same way, for tracebacks only.

What is not covered: a module imported only inside a function (it is not loaded in the caller yet), a module
without a ``.py`` source (a C extension of the project), and edits to a file after it was imported (its source
is read when it is first shipped). Such a module fails to import on the node with an error naming it.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import linecache
import os
import site
import sys
import sysconfig
import threading
import types
from typing import Any, Iterable, NamedTuple

MAIN = "__main__"


class ModuleSource(NamedTuple):
    name: str
    source: str
    filename: str
    is_package: bool = False
    lines_only: bool = False  # a script's source, for tracebacks: never imported


def _install_paths() -> tuple[str, ...]:
    paths = set(sysconfig.get_paths().values())
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    paths.add(site.getusersitepackages())
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        paths.add(os.path.join(prefix, "lib"))
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # disto itself
    return tuple(os.path.join(os.path.realpath(p), "") for p in paths if p)


_INSTALLED = _install_paths()
_verdicts: dict[str, bool] = {}  # module name -> shippable (modules do not move once imported)


def shippable(name: str) -> bool:
    """Whether module ``name`` (already imported here) is the user's own code, to be sent to peers."""
    verdict = _verdicts.get(name)
    if verdict is None:
        if name not in sys.modules:
            return False  # not imported (yet): nothing to send, and no verdict to remember
        verdict = _verdicts[name] = _judge(name)
    return verdict


def _judge(name: str) -> bool:
    if name == MAIN:
        return True  # its classes travel by value; its source only for tracebacks
    if name == "disto" or name.startswith("disto."):
        return False
    module = sys.modules.get(name)
    if module is None:
        return False
    spec = getattr(module, "__spec__", None)
    if spec is not None and isinstance(spec.loader, ShippedModules):
        return True  # shipped here: pass it on
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or not os.path.exists(path):
        return False
    return not os.path.realpath(path).startswith(_INSTALLED)


def _source_of(name: str) -> ModuleSource | None:
    module = sys.modules.get(name)
    if module is None:
        return None
    spec = getattr(module, "__spec__", None)
    if spec is not None and isinstance(spec.loader, ShippedModules):
        return spec.loader.sources.get(name)
    path = getattr(module, "__file__", None)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return None
    return ModuleSource(name, text, path, hasattr(module, "__path__"), lines_only=name == MAIN)


def closure(names: Iterable[str]) -> list[ModuleSource]:
    """The sources to send for modules ``names``: each, its parent packages, and the shippable modules it
    refers to (imported modules, and the modules of the classes and functions in its namespace), parents
    before children."""
    seen: set[str] = set()
    order: list[str] = []

    def visit(name: str) -> None:
        if name in seen or not shippable(name):
            return
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent:
            visit(parent)
        module = sys.modules.get(name)
        if module is not None and name != MAIN:
            for value in list(vars(module).values()):
                ref = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
                if isinstance(ref, str) and ref != name and ref in sys.modules:
                    visit(ref)
        order.append(name)

    for n in names:
        visit(n)
    out = []
    for n in order:
        src = _source_of(n)
        if src is not None:
            out.append(src)
    return out


class ShippedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves modules whose source a peer sent; consulted after every other finder."""

    def __init__(self) -> None:
        self.sources: dict[str, ModuleSource] = {}
        self._lock = threading.Lock()

    def install(self, sources: Iterable[ModuleSource]) -> None:
        with self._lock:
            for src in sources:
                if src.lines_only:
                    _remember_lines(src)
                else:
                    self.sources.setdefault(src.name, src)  # what is imported stays: no reloads behind a call

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        src = self.sources.get(fullname)
        if src is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=src.filename, is_package=src.is_package)
        spec.has_location = True
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        src = self.sources[module.__name__]
        _remember_lines(src)
        module.__file__ = src.filename
        if src.is_package:
            module.__path__ = []  # its submodules come from here too, by name
        exec(compile(src.source, src.filename, "exec"), module.__dict__)  # noqa: S102 - a peer's code, like a pickle


def _remember_lines(src: ModuleSource) -> None:
    lines = src.source.splitlines(keepends=True)
    linecache.cache[src.filename] = (len(src.source), None, lines, src.filename)


FINDER = ShippedModules()


def install_finder() -> ShippedModules:
    """Put the process's finder of shipped modules at the end of ``sys.meta_path`` (once)."""
    if FINDER not in sys.meta_path:
        sys.meta_path.append(FINDER)
    return FINDER
