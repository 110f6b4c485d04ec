"""Builds the optional compiled hot path (disto/wire/_speedups.pyx, disto/memory/_block.pyx) with Cython and the
machine's C compiler.

Everything else is in pyproject.toml. Without Cython or a compiler, or with DISTO_PURE_PYTHON=1 set at install
time, disto installs without it and runs the pure-Python codec (same bytes, slower)."""
import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("DISTO_PURE_PYTHON", "").strip().lower() in ("", "0", "false", "no"):
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("disto: Cython is not installed; installing the pure-Python codec only")
    else:
        ext_modules = cythonize(
            [Extension("disto.wire._speedups", ["disto/wire/_speedups.pyx"], extra_compile_args=["-O2"]),
             Extension("disto.memory._block", ["disto/memory/_block.pyx"], extra_compile_args=["-O2"])],
            compiler_directives={"language_level": "3"}, quiet=True)
        for ext in ext_modules:
            ext.optional = True  # a failed compile warns and installs the rest (cythonize drops this flag)

setup(ext_modules=ext_modules)
