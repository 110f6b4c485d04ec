"""Which modules run compiled: the modules of the per-message path built from their own .py source (a .pxd beside
each), the switch to run their source instead (DISTO_PURE_PYTHON=1), and a stale build (source edited since)."""
from __future__ import annotations

import importlib.machinery
import os
import pathlib
import subprocess
import sys
import warnings

import pytest

import disto
from disto import native
from disto.wire import codec

ROOT = pathlib.Path(disto.__file__).parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_the_list_is_every_module_with_a_pxd_beside_it() -> None:
    # setup.py compiles exactly these: a .py with a .pxd next to it
    with_pxd = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
                for p in ROOT.rglob("*.pxd") if p.with_suffix(".py").exists()}
    assert with_pxd == set(native.COMPILED_FROM_SOURCE)


def test_built_means_every_one_runs_compiled() -> None:
    # (built: the codec extension imports; the install builds all of them or, without a compiler, none)
    if native.PURE_PYTHON_REQUESTED or codec.IMPLEMENTATION == "python":
        assert native.compiled_modules() == []
    else:
        assert native.compiled_modules() == list(native.COMPILED_FROM_SOURCE)


def test_pure_python_requested_runs_the_sources() -> None:
    out = subprocess.run([sys.executable, "-c", "from disto import native; from disto.wire import codec; "
                          "print(native.compiled_modules(), codec.IMPLEMENTATION)"],
                         env=dict(os.environ, DISTO_PURE_PYTHON="1"), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "python"]


def _tree(tmp: pathlib.Path, source_age: float) -> tuple[str, str]:
    """channel.py and a (fake) built channel extension; the source ``source_age`` seconds older than it."""
    source, extension = tmp / "channel.py", tmp / f"channel{SUFFIX}"
    source.write_text("X = 1\n")
    extension.write_bytes(b"")
    os.utime(extension, (1_000_000, 1_000_000))
    os.utime(source, (1_000_000 - source_age, 1_000_000 - source_age))
    return str(source), str(extension)


def test_the_extension_is_used_unless_pure_or_stale(tmp_path: pathlib.Path) -> None:
    source, extension = _tree(tmp_path, 60)
    assert not native.use_source(source, extension, pure=False)
    assert native.use_source(source, extension, pure=True)
    os.utime(source, (1_000_100, 1_000_100))  # edited after the build
    assert native.use_source(source, extension, pure=False)


def test_the_finder_loads_a_stale_source_and_warns(tmp_path: pathlib.Path) -> None:
    name = "disto.transport.channel"
    _tree(tmp_path, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.SourceFinder(pure=False).find_spec(name, [str(tmp_path)]) is None  # up to date: the default
        spec = native.SourceFinder(pure=True).find_spec(name, [str(tmp_path)])  # pure: the source, quietly
    assert spec is not None and spec.origin == str(tmp_path / "channel.py")
    os.utime(tmp_path / "channel.py", (1_000_100, 1_000_100))
    finder = native.SourceFinder(pure=False)
    with pytest.warns(RuntimeWarning, match="newer than its compiled module"):
        spec = finder.find_spec(name, [str(tmp_path)])
    assert spec is not None and spec.origin == str(tmp_path / "channel.py") and finder.stale == [name]
    # other modules, and a tree without a build, are left to the default finders
    assert native.SourceFinder(pure=True).find_spec("disto.wire.codec", [str(tmp_path)]) is None
    (tmp_path / f"channel{SUFFIX}").unlink()
    assert native.SourceFinder(pure=True).find_spec(name, [str(tmp_path)]) is None


def test_the_finder_is_installed_once_and_first() -> None:
    assert isinstance(sys.meta_path[0], native.SourceFinder)
    assert native.install() is sys.meta_path[0]
    assert sum(isinstance(f, native.SourceFinder) for f in sys.meta_path) == 1
