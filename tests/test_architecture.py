"""The house rules, read from the code's syntax trees (no imports, well under a second):

- data flows one way: each package imports only packages on lower floors (LAYERS), so no two packages
  import each other, and no module import circle exists inside a package either;
- only pipeline/ imports Ray (everything else schedules through pipeline.executor);
- no function outside tests is longer than 60 lines;
- no test imports conftest (shared helpers live in tests/support.py, fixtures in conftest.py).

`python -m pytest tests/test_architecture.py -q` prints the offending file and line when a rule breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Floors from the ground up: a package may import its own floor's modules and any lower floor's.
LAYERS = (
    ("pipeline",),  # config and settings, the Stage contract, runner, executor, records, storage
    ("prompts",),  # LLM prompt text, few-shot data, builder, schema
    ("tiny",),  # the tiny profile's random-weight models and synthetic stage outputs
    ("filters", "sources"),  # caption rules and dedup, pair scores; input reading and planning
    ("p2p",),  # Prompt-to-Prompt rendering
    ("llm",),  # LLM backends, parsing, validation
    ("output",),  # shards, manifest, loader, exporter
    ("stages",),  # the thin stage classes
    ("cli",),  # the editgen command and its tools
    ("bench",),
)
FLOOR = {pkg: i for i, floor in enumerate(LAYERS) for pkg in floor}
MAX_FUNCTION_LINES = 60


def _sources(*, tests: bool) -> list[Path]:
    skip = {".venv", ".venv-llm", ".git", "build", ".cache"}
    files = [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if (p.relative_to(ROOT).parts[0] == "tests") == tests)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in the file, at any depth (function-local ones included)."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _project_graph() -> dict[str, set[str]]:
    """module -> project modules it imports: `from pkg import mod` names the module when it is one, and a
    module's own enclosing packages (which Python loads first anyway) are no edge."""
    modules = {_module(p): p for p in _sources(tests=False)}
    graph = {}
    for name, path in modules.items():
        found = {m for m, _ in _imports(path) if m in modules and m != name}
        found -= {m.rsplit(".", 1)[0] for m in found if "." in m}  # `from a import b` (a module): b, not a
        graph[name] = {m for m in found if not name.startswith(m + ".")}
    return graph


def test_packages_import_only_lower_floors():
    wrong = []
    for path in _sources(tests=False):
        pkg = path.relative_to(ROOT).parts[0]
        if pkg not in FLOOR:
            continue
        for module, line in _imports(path):
            top = module.split(".")[0]
            if top in FLOOR and FLOOR[top] > FLOOR[pkg]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {module} from a higher floor")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_between_modules():
    graph = _project_graph()
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail
                               else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "\n".join(circles)


def test_only_pipeline_imports_ray():
    wrong = [f"{p.relative_to(ROOT)}:{line}: imports {m}" for p in _sources(tests=False)
             if p.relative_to(ROOT).parts[0] != "pipeline"
             for m, line in _imports(p) if m == "ray" or m.startswith("ray.")]
    assert not wrong, "\n".join(wrong)


def test_no_function_over_60_lines_outside_tests():
    long = []
    for path in _sources(tests=False):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} has {n} lines")
    assert not long, "\n".join(long)


def test_no_test_imports_conftest():
    wrong = [f"{p.relative_to(ROOT)}:{line}: imports {m}" for p in _sources(tests=True)
             for m, line in _imports(p) if m.split(".")[-1] == "conftest" or m.startswith("tests.conftest")]
    assert not wrong, "\n".join(wrong)
