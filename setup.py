"""Builds the optional compiled hot path with Cython and the machine's C compiler: the Cython modules
(disto/wire/_speedups.pyx, disto/memory/_block.pyx, disto/serialization/_scalars.pyx,
disto/transport/_fromthread.pyx), and every module of the per-message path that has a .pxd file
next to its .py (compiled from that source, its classes C types with the .pxd's typed fields; see disto/native.py).

Everything else is in pyproject.toml. Without Cython or a compiler, or with DISTO_PURE_PYTHON=1 set at install
time, disto installs without them and runs the pure-Python modules (same bytes, slower)."""
import glob
import os

from setuptools import Extension, setup


def _from_source() -> list[str]:
    """disto/**/x.py with a disto/**/x.pxd beside it."""
    return sorted(p[:-4] + ".py" for p in glob.glob("disto/**/*.pxd", recursive=True) if os.path.exists(p[:-4] + ".py"))


ext_modules = []
if os.environ.get("DISTO_PURE_PYTHON", "").strip().lower() in ("", "0", "false", "no"):
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("disto: Cython is not installed; installing the pure-Python modules only")
    else:
        sources = ["disto/wire/_speedups.pyx", "disto/memory/_block.pyx", "disto/serialization/_scalars.pyx",
                   "disto/transport/_fromthread.pyx", *_from_source()]
        ext_modules = cythonize(
            [Extension(os.path.splitext(s)[0].replace("/", "."), [s], extra_compile_args=["-O2"]) for s in sources],
            # annotation_typing off: a .py's annotations are documentation, not C types (``frames: list`` must
            # still take a tuple); the .pxd files say what is typed
            compiler_directives={"language_level": "3", "annotation_typing": False}, quiet=True)
        for ext in ext_modules:
            ext.optional = True  # a failed compile warns and installs the rest (cythonize drops this flag)

setup(ext_modules=ext_modules)
