"""The import rules of ARCHITECTURE.md: the bottom layers never import asyncio, socket or torch, and imports only
point down."""
from __future__ import annotations

import ast
import pathlib

import disto

ROOT = pathlib.Path(disto.__file__).parent


def imports_of(path: pathlib.Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for n in ast.walk(block)}
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = path.parent.relative_to(ROOT.parent).parts
                parts = list(pkg[:len(pkg) - node.level + 1])
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
    return out


IO = {"asyncio", "socket", "uvloop", "selectors"}


def test_sans_io_layers_import_no_io_and_no_torch() -> None:
    bottom = [*(ROOT / "wire").glob("*.py"), ROOT / "_errors.py", ROOT / "_ids.py", ROOT / "membership.py"]
    for path in bottom:
        for mod in imports_of(path):
            assert mod.split(".")[0] not in IO | {"torch"}, f"{path.name}: {mod}"
    # serialization handles tensors, but imports torch only inside functions, when a tensor is actually seen
    for path in (ROOT / "serialization").glob("*.py"):
        for mod in imports_of(path):
            assert mod.split(".")[0] not in IO, f"{path.name}: {mod}"
        for mod in imports_of(path, top_level_only=True):
            assert mod.split(".")[0] != "torch", f"{path.name}: {mod}"


def test_importing_disto_does_not_import_torch() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, disto; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_imports_point_down() -> None:
    order = ["disto._errors", "disto._ids", "disto.membership", "disto.wire", "disto.serialization", "disto.transport",
             "disto.futures", "disto.actor", "disto._mailbox", "disto._buffers", "disto.node", "disto._system", "disto.shared", "disto.cluster",
             "disto.launch", "disto.cli"]
    rank = {m: i for i, m in enumerate(order)}

    def layer(mod: str) -> str | None:
        best = None
        for m in order:
            if mod == m or mod.startswith(m + "."):
                best = m
        return best

    for path in ROOT.rglob("*.py"):
        me = layer(".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"))
        if me is None:
            continue
        for mod in imports_of(path):
            other = layer(mod)
            if other is None or other == me:
                continue
            # _system is installed by the node at start (a deliberate, local upward import)
            if (me, other) == ("disto.node", "disto._system"):
                continue
            assert rank[other] < rank[me], f"{path.relative_to(ROOT)} imports {mod} (upward)"


def test_public_api_is_reexported() -> None:
    for name in disto.__all__:
        assert hasattr(disto, name), name
    assert issubclass(disto.TimeoutError, TimeoutError) and issubclass(disto.TimeoutError, disto.DistoError)


def test_easgd_uses_only_the_public_api() -> None:
    for path in (ROOT / "easgd").glob("*.py"):
        for mod in imports_of(path):
            if mod.startswith("disto"):
                assert mod == "disto" or mod.startswith("disto.easgd"), f"easgd/{path.name} imports {mod}"


def test_search_uses_only_the_public_api() -> None:
    # one exception: the Thrift service and the shards' link decode with the wire layer's bounded decoder
    allowed = {"service.py": {"disto.wire.messages"}, "link.py": {"disto.wire.messages"}}
    for path in (ROOT / "search").glob("*.py"):
        for mod in imports_of(path):
            if mod.startswith("disto"):
                ok = mod == "disto" or mod.startswith("disto.search") or mod in allowed.get(path.name, set())
                assert ok, f"search/{path.name} imports {mod}"
