"""The house: imports go one way (benchmarks → agents.job → agents → rewards → ddpo_env), no module imports its own
package's top (the registries stay below their users), there is no import circle, and no module is past 400 lines.

Read from the source with ``ast`` (every import, also those inside functions), so a lazy import counts too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ddpo_env", "rewards", "agents", "benchmarks")
MAX_LINES = 400


def _layer(module: str) -> int:
    if module == "agents.job" or module.startswith("agents.job."):
        return 3
    return {"ddpo_env": 0, "rewards": 1, "agents": 2, "benchmarks": 4}[module.split(".")[0]]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def _import_graph() -> dict[str, set[str]]:
    """module → the project's modules it imports (the deepest module an import names)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, file in modules.items():
        package = module.split(".") if file.name == "__init__.py" else module.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {resolve(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                found |= {resolve(f"{base}.{alias.name}") or resolve(base) for alias in node.names}
        graph[module] = {m for m in found if m and m != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_imports_go_one_way():
    upward = sorted(f"{m} -> {o}" for m, out in _import_graph().items() for o in out if _layer(o) > _layer(m))
    assert not upward, f"imports against the layers (benchmarks → agents.job → agents → rewards → ddpo_env): {upward}"


def test_no_module_imports_its_own_packages_top():
    """A registry kept in a package's __init__ and read back from inside the package makes a circle."""
    back = sorted(f"{m} -> {o}" for m, out in _import_graph().items() for o in out
                  if "." in m and _layer(o) == _layer(m) and o in (*PACKAGES, "agents.job") and m.startswith(o + "."))
    assert not back, f"modules importing their own package's top: {back}"


def test_there_is_no_import_circle():
    cycles = [c for c in _cycles(_import_graph())
              if not any(m in PACKAGES for m in c)]  # a package top re-exporting its modules is not a circle
    assert not cycles, f"import circles: {cycles}"


def test_no_module_is_past_400_lines():
    long = {str(f.relative_to(ROOT)): n for f in _modules().values()
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by meaning: {long}"


def test_the_graph_reader_sees_lazy_and_relative_imports(tmp_path):
    """The checks above can fail: a lazy import inside a function is an edge, and a circle is found."""
    assert "ddpo_env.tasks" in _import_graph()["ddpo_env.backends"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _layer("agents.job.train") == 3 and _layer("agents.policy") == 2
