"""Which of disto's modules run compiled, and the switch to run none of them.

``pip install`` builds two kinds of extension with Cython and the machine's C compiler (``setup.py``):
- ``wire/_speedups.pyx``, ``memory/_block.pyx``, ``serialization/_scalars.pyx`` and
  ``transport/_fromthread.pyx``, written in Cython, next to pure-Python equivalents that the modules using them
  fall back to (``wire/codec.py``, ``memory/blocks.py``, ``serialization/scalars.py``; without the last, actors'
  threads hand their replies to the loop: ``transport/threadwrites.py``);
- the modules of the per-message path, compiled from their own ``.py`` source with the ``.pxd`` file next to it,
  which turns their classes into C types with typed fields (:data:`COMPILED_FROM_SOURCE`). The ``.py`` is the one
  source and the fallback: the import system prefers an extension module to a source file of the same name, and
  :func:`install` puts a finder first that loads the source instead when

  - ``DISTO_PURE_PYTHON=1`` is set in the environment (what an install without a compiler runs; CI runs the
    tests both ways; nodes a cluster starts inherit the variable), or
  - the source is newer than its extension (edited since the last build, which would run the old code): it
    warns (once per module), and ``pip install -e .`` builds it again.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import Sequence

PURE_PYTHON_REQUESTED = os.environ.get("DISTO_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no")

# the modules setup.py compiles from source (each has a .pxd next to its .py): the per-message path, then the
# tensor path's pickling and buffer routing; tests/test_native.py checks the list
COMPILED_FROM_SOURCE = ("disto.wire.connection", "disto.transport.channel", "disto.actor.mailbox",
                        "disto.actor.threads", "disto.node.inbound", "disto.node.outbound", "disto.node.replies",
                        "disto.node.metrics", "disto.serialization.pickler", "disto.serialization.tensors",
                        "disto.node.buffers", "disto.serialization.direct",
                        "disto.serialization.shm", "disto.serialization.placement", "disto.memory.segments")


def use_source(source: str, extension: str, pure: bool) -> bool:
    """Whether to import ``source`` rather than the extension built from it."""
    return pure or os.stat(source).st_mtime > os.stat(extension).st_mtime


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`COMPILED_FROM_SOURCE` in their ``.py`` source where :func:`use_source` says so;
    leaves everything else (and those, otherwise) to the default finders."""

    def __init__(self, pure: bool) -> None:
        self.pure = pure
        self.stale: list[str] = []

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_FROM_SOURCE or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if not os.path.isfile(source):
                continue
            extension = next((e for e in (os.path.join(entry, leaf + s) for s in importlib.machinery.EXTENSION_SUFFIXES)
                              if os.path.isfile(e)), None)
            if extension is None or not use_source(source, extension, self.pure):
                return None
            if not self.pure:
                self.stale.append(fullname)
                warnings.warn(f"{source} is newer than its compiled module {os.path.basename(extension)}: running "
                              "the source (slower); `pip install -e .` builds it again", RuntimeWarning, stacklevel=2)
            return importlib.util.spec_from_file_location(fullname, source)
        return None


def install() -> SourceFinder:
    """Put the finder first on ``sys.meta_path`` (once); ``disto/__init__.py`` calls it before importing the rest."""
    for finder in sys.meta_path:
        if isinstance(finder, SourceFinder):
            return finder
    finder = SourceFinder(PURE_PYTHON_REQUESTED)
    sys.meta_path.insert(0, finder)
    return finder


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_FROM_SOURCE` this process runs compiled (imports them)."""
    out = []
    for name in COMPILED_FROM_SOURCE:
        module = importlib.import_module(name)
        if not (module.__file__ or "").endswith(".py"):
            out.append(name)
    return out
