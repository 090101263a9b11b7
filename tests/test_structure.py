"""The package's shape: stages import downwards only, and nothing imports the CLI."""
import ast
from pathlib import Path

from tests.conftest import ROOT

PKG = ROOT / "builder"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every builder module this one imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".")[: -node.level] if not path.name == "__init__.py" else name.split(".")[: len(name.split(".")) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t != "builder":
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_detector_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_nothing_imports_the_cli():
    importers = sorted(m for m, deps in graph().items() if "builder.cli" in deps and m != "builder.__main__")
    assert importers == []


# Stages in the order data flows; a module may import its own stage and those before it.
# gen (the pkgbase repository generator) reads the formats below it and feeds the runs (demo, bench).
STAGES = ["builder.errors", "builder.common", "builder.config", "builder.resolve", "builder.install",
          "builder.gen", "builder.layers", "builder.oci", "builder.prove", "builder.runs", "builder.cli", "builder.__main__"]


def _stage(mod: str) -> int:
    for i, s in enumerate(STAGES):
        if mod == s or mod.startswith(s + "."):
            return i
    return -1


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in g.items() for d in deps if _stage(d) > _stage(m))


def test_every_module_has_a_stage():
    assert sorted(m for m in graph() if _stage(m) < 0 and m != "builder") == []


def test_upward_detector_sees_an_upward_import():
    assert upward({"builder.layers.build": {"builder.runs.images"}}) == ["builder.layers.build -> builder.runs.images"]
    assert upward({"builder.runs.images": {"builder.layers.build"}}) == []


def test_stages_import_downwards():
    assert upward(graph()) == []


def literal_attribute_reads(source: str) -> list[int]:
    """Lines of getattr/hasattr calls with a literal attribute name: a typed access written untyped,
    which is how a module reads an object of a stage above it without importing it (the import
    test above would not see it)."""
    return sorted(node.lineno for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str))


def test_literal_attribute_detector():
    assert literal_attribute_reads('x = getattr(build, "revision", None)\ny = hasattr(o, "a")') == [1, 2]
    assert literal_attribute_reads("x = getattr(node, field)\ny = build.revision") == []


def test_no_attribute_read_by_literal_name():
    found = [f"{p.relative_to(ROOT)}:{line}" for p in sorted(PKG.rglob("*.py"))
             for line in literal_attribute_reads(p.read_text())]
    assert found == []
