"""The architecture, checked: the bottom layers import no IO and no torch, imports only point down the layers,
there is no import cycle anywhere in disto/, and no module or class of the core outgrows its concern."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import disto

ROOT = pathlib.Path(disto.__file__).parent
PKG = ROOT.parent
IO = {"asyncio", "socket", "uvloop", "selectors", "ssl", "threading"}

# bottom to top; a module belongs to the longest prefix that names it
LAYERS = [
    ["disto.errors", "disto.ids", "disto.version", "disto.native"],
    ["disto.wire", "disto.liveness", "disto.memory", "disto.placement"],
    ["disto.serialization"],
    ["disto.transport"],
    ["disto.streams"],
    ["disto.futures", "disto.loop"],
    ["disto.actor"],
    ["disto.node"],
    ["disto.cluster"],
    ["disto.dashboard"],
    ["disto.launch", "disto.cli"],
    ["disto.__main__", "disto"],
    ["disto.easgd", "disto.search"],
    ["disto.lowcomm"],  # reuses the EA-SGD package's flat-vector helpers
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# the pure layers: bytes or timestamps in, events out (memory maps files and takes a lock, nothing more)
SANS_IO = ["wire", "liveness", "memory", "placement", "errors.py", "ids.py"]
CORE_EXCLUDED = ("easgd", "lowcomm", "search", "wire/fastcodec.py")  # built on the public API / the hand-written codec
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(PKG).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(path: pathlib.Path, top_level_only: bool = False) -> set[str]:
    """The disto modules (and other top-level names) ``path`` imports, outside ``if TYPE_CHECKING:`` blocks.
    ``from . import x`` counts as importing the submodule ``x`` when there is one."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for n in ast.walk(block)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            out.update(subs if subs and len(subs) == len(node.names) else [base, *subs])
    return out


def layer_of(mod: str) -> str | None:
    best = None
    for name in RANK:
        if (mod == name or mod.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    return best


def test_sans_io_layers_import_no_io_and_no_torch() -> None:
    for entry in SANS_IO:
        paths = (ROOT / entry).glob("*.py") if (ROOT / entry).is_dir() else [ROOT / entry]
        for path in paths:
            allowed = {"threading"} if path.parent.name == "memory" else set()
            for mod in imports_of(path):
                top = mod.split(".")[0]
                assert top not in (IO - allowed) | {"torch", "time"}, f"{path.relative_to(ROOT)}: {mod}"
    # serialization handles tensors, but imports torch only inside functions, when a tensor is actually seen
    for path in (ROOT / "serialization").glob("*.py"):
        for mod in imports_of(path):
            assert mod.split(".")[0] not in IO - {"threading"}, f"{path.name}: {mod}"
        for mod in imports_of(path, top_level_only=True):
            assert mod.split(".")[0] != "torch", f"{path.name}: {mod}"


def test_importing_disto_does_not_import_torch() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, disto; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_imports_point_down_the_layers() -> None:
    assert all(layer_of(m) is not None for m in MODULES), [m for m in MODULES if layer_of(m) is None]
    for mod, path in MODULES.items():
        me = layer_of(mod)
        for other_mod in imports_of(path):
            other = layer_of(other_mod) if other_mod.startswith("disto") else None
            if other is None or other == me:
                continue
            assert RANK[other] < RANK[me] or (me in ("disto.easgd", "disto.search") and other == "disto"), \
                f"{path.relative_to(ROOT)} imports {other_mod} (layer {other} is not below {me})"


def test_no_import_cycles() -> None:
    graph = {m: {i for i in imports_of(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    # importing a submodule runs its package's __init__ first
    for m in list(graph):
        for i in list(graph[m]):
            pkg = i.rpartition(".")[0]
            if pkg in MODULES and pkg != m and not m.startswith(pkg + "."):
                graph[m].add(pkg)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_core_modules_and_classes_stay_small() -> None:
    for mod, path in MODULES.items():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(CORE_EXCLUDED):
            continue
        text = path.read_text()
        assert text.count("\n") <= MAX_MODULE_LINES, f"{rel}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                n = node.end_lineno - node.lineno + 1
                assert n <= MAX_CLASS_LINES, f"{rel}: class {node.name} is {n} lines"


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
    # the exceptions: the Thrift service and the link decode with the wire layer's bounded decoder, and the link's
    # batch blocks are shared-memory segments of the one segment primitive
    allowed = {"service.py": {"disto.wire.messages"}, "link_protocol.py": {"disto.wire.messages"},
               "link.py": {"disto.memory"}}
    for path in (ROOT / "search").glob("*.py"):
        for mod in imports_of(path):
            if mod.startswith("disto"):
                ok = mod == "disto" or mod.startswith("disto.search") or mod in allowed.get(path.name, set())
                assert ok, f"search/{path.name} imports {mod}"
