"""The house rules of docs/architecture.md, checked with the standard library's ``ast``:

- no import cycles between simx's modules, function-level imports included;
- imports between the runtime's rooms go one way, downward (``ROOMS``), and only the
  command line reaches up into ``simx.export``;
- no module over ``MAX_MODULE_LINES`` lines and no function over ``MAX_FUNCTION_LINES``;
- only ``simx.core.failpoints`` reads the ``SIMX_TEST_*`` / ``SIMX_FAILPOINTS`` variables.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: a room may import its own modules and the rooms before it, never after.
ROOMS = ("core", "model", "images", "run", "cache", "embed", "retrieval", "bench", "report", "cli")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
PACKAGES = {"simx": ROOT / "runtime", "simx.export": ROOT / "export"}


def _modules() -> dict[str, Path]:
    out = {}
    for base in (ROOT / "runtime", ROOT / "export"):
        for p in sorted(base.rglob("*.py")):
            rel = p.relative_to(base).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            prefix = "simx" if base.name == "runtime" else "simx.export"
            out[".".join([prefix, *parts])] = p
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> set[str]:
    """The simx modules ``name`` imports anywhere in its body."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node)
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        for t in targets:
            while t and t not in MODULES:  # `import simx.x.y as z` of a package attribute
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == [], "import cycles (function-level imports count too)"


def _room(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) < 2 or parts[1] == "export":
        return None
    return parts[1] if parts[1] in ROOMS else None


def test_every_runtime_module_lives_in_a_room():
    loose = [m for m in MODULES if m.count(".") == 1 and not m.startswith("simx.export")
             and _room(m) is None]
    assert loose == [], f"modules outside the rooms {ROOMS}: {loose}"


def test_imports_go_downward():
    bad = []
    for m, deps in GRAPH.items():
        src = _room(m)
        for d in deps:
            dst = _room(d)
            if src is None or dst is None:
                if src is not None and src != "cli" and d.startswith("simx.export"):
                    bad.append(f"{m} -> {d} (only the command line may reach the export stage)")
                continue
            if ROOMS.index(dst) > ROOMS.index(src):
                bad.append(f"{m} ({src}) -> {d} ({dst})")
    assert bad == [], "imports that go up the rooms:\n" + "\n".join(sorted(bad))


def test_the_top_package_imports_only_core_eagerly():
    deps = {d for d in GRAPH["simx"]}
    assert {_room(d) for d in deps} <= {"core"}, deps


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_function_sizes(name):
    text = MODULES[name].read_text()
    n = text.count("\n")
    assert n <= MAX_MODULE_LINES, f"{MODULES[name]}: {n} lines > {MAX_MODULE_LINES}"
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in ast.walk(ast.parse(text))
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{MODULES[name]}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_only_failpoints_reads_the_test_hooks():
    readers = [str(p.relative_to(ROOT)) for m, p in MODULES.items()
               if m != "simx.core.failpoints" and ("SIMX_TEST_" in p.read_text()
                                                   or "SIMX_FAILPOINTS" in p.read_text())]
    assert readers == []
