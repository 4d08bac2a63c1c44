"""The house rules, read from the code's syntax trees (no imports, well under a second):

- data flows one way: each package imports only packages on lower floors (LAYERS), so no two packages
  import each other, and no module import circle exists inside a package either;
- only pipeline/ imports Ray (everything else schedules through pipeline.executor);
- no function outside tests is longer than 60 lines;
- no test imports conftest (shared helpers live in tests/support.py, fixtures in conftest.py);
- no two test modules share a file name (pytest imports test files by basename: a second one is a
  collection error for the whole run).

`python -m pytest tests/test_architecture.py -q` prints the offending file and line when a rule breaks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Floors from the ground up: a package may import its own floor's modules and any lower floor's.
LAYERS = (
    ("pipeline",),  # config and settings, the Stage contract, runner, executor, records, storage
    ("prompts",),  # LLM prompt text, few-shot data, builder, schema
    ("tiny",),  # the tiny profile's random-weight models and synthetic stage outputs
    ("filters", "sources"),  # caption rules and dedup, pair scores; input reading and planning
    ("p2p",),  # Prompt-to-Prompt rendering
    ("engines",),  # edit engines: the interface, the typed candidate record, the registry, each engine
    ("llm",),  # LLM backends, parsing, validation
    ("output",),  # shards, manifest, loader, exporter
    ("probe",),  # the probe model: InstructPix2Pix fine-tuned on a run's shards (editgen train-probe)
    ("evaluation",),  # `editgen evaluate`: eval-set readers, the image-guidance sweep, metrics, report
    ("stages",),  # the thin stage classes
    ("cli",),  # the editgen command and its tools
    ("bench",),
)
FLOOR = {pkg: i for i, floor in enumerate(LAYERS) for pkg in floor}
MAX_FUNCTION_LINES = 60


#: The one import name: every project package is `editgen.<package>` (pyproject.toml maps the folders).
DIST = "editgen"
#: Dynamic lookups by name that cross floors on purpose: the core finds the stage graph by name
#: (pipeline/registry.py; docs/architecture.md) so an environment without a stage's stack still runs,
#: and the render settings find the engine registry and each engine's own settings checks the same way
#: (and the routing table, `render.routes`, with the edit types it routes).
ALLOWED_DYNAMIC = {("editgen.pipeline.registry", "editgen.stages"),
                   ("editgen.pipeline.settings.render", "editgen.engines.base"),
                   ("editgen.pipeline.settings.render", "editgen.engines.routes"),
                   ("editgen.pipeline.settings.instruct", "editgen.prompts.taxonomy"),
                   ("editgen.pipeline.settings.shard", "editgen.prompts.taxonomy")}


def _sources(*, tests: bool) -> list[Path]:
    skip = {".venv", ".venv-llm", ".git", "build", ".cache"}
    files = [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if (p.relative_to(ROOT).parts[0] == "tests") == tests)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _packages() -> list[str]:
    """Top-level folders that are Python packages (besides tests and the editgen name itself)."""
    return sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests", DIST))


def _module(path: Path) -> str:
    """A file's import name: `editgen.<package>...` for the project's packages, its path otherwise."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return f"{DIST}.{name}" if parts[0] in _packages() else name


def _package(module: str) -> str | None:
    """The project package an import name belongs to (`editgen.p2p.x` -> p2p), else None."""
    parts = module.split(".")
    return parts[1] if parts[0] == DIST and len(parts) > 1 and parts[1] in _packages() else None


def _module_string(value: object) -> str | None:
    """A string constant that names a project module (`editgen.stages.render`, `editgen.cli.main`,
    `editgen.stages.ingest:IngestStage`): code that imports by name (importlib, registries, -m)."""
    if isinstance(value, str) and re.fullmatch(rf"{DIST}(\.[A-Za-z_][A-Za-z_0-9]*)+(:[A-Za-z_]\w*)?", value):
        return value.split(":")[0]
    return None


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in the file, at any depth (function-local ones included), and of
    every string that names a project module (importlib.import_module, registries: imports by name)."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Constant) and _module_string(node.value):
            found.append((_module_string(node.value), node.lineno))
    return found


def _project_graph() -> dict[str, set[str]]:
    """module -> project modules it imports: `from pkg import mod` names the module when it is one, and a
    module's own enclosing packages (which Python loads first anyway) are no edge."""
    modules = {_module(p): p for p in _sources(tests=False)}
    graph = {}
    for name, path in modules.items():
        found = {m for m, _ in _imports(path) if m in modules and m != name and (name, m) not in ALLOWED_DYNAMIC}
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
            top = _package(module)
            if (_module(path), module) in ALLOWED_DYNAMIC:
                continue
            if top in FLOOR and FLOOR[top] > FLOOR[pkg]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {module} from a higher floor")
    assert not wrong, "\n".join(wrong)


def test_every_import_goes_through_the_editgen_name():
    """No bare `pipeline...` (it exists only in a source checkout: an installed wheel has editgen alone),
    no relative import (the floor check could not see it), no module named by a bare string."""
    bare = set(_packages())
    wrong = []
    for path in [*_sources(tests=False), *_sources(tests=True)]:
        for node in ast.walk(_tree(path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.level:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: relative import (use editgen.<package>)")
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: imports {n} (use editgen.{n})"
                      for n in names if n.split(".")[0] in bare]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _bare_module(node.value, bare):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: names module {node.value!r} "
                             f"(use 'editgen.{node.value}')")
    assert not wrong, "\n".join(wrong)


def _bare_module(value: str, bare: set[str]) -> bool:
    """A string that names an existing project module without the editgen prefix ("stages.render",
    "cli.main", "stages.ingest:IngestStage"): importlib would find it only in a source checkout."""
    m = re.fullmatch(r"([a-z_0-9]+)((?:\.[a-z_0-9]+)*)(:\w+)?", value)
    if not m or m[1] not in bare or not (m[2] or m[3]):
        return False
    rel = Path(m[1], *m[2].split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def test_every_package_has_a_floor_and_is_installed():
    """A new top-level package must be placed on a floor (else no rule applies to it) and installed as
    editgen.<package> with all its subpackages (else the wheel lacks it)."""
    import tomllib

    missing = [p for p in _packages() if p not in FLOOR]
    assert not missing, f"packages without a floor in LAYERS: {missing}"
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = sorted({DIST} | {f"{DIST}." + ".".join(p.parent.relative_to(ROOT).parts)
                            for pkg in _packages() for p in (ROOT / pkg).rglob("__init__.py")})
    assert sorted(conf["packages"]) == tree, "pyproject.toml [tool.setuptools] packages != the tree"
    assert {k: v for k, v in conf["package-dir"].items() if k != DIST} == {f"{DIST}.{p}": p for p in _packages()}


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


def test_no_two_test_modules_share_a_file_name():
    seen: dict[str, list[str]] = {}
    for p in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(p.name, []).append(str(p.relative_to(ROOT)))
    same = [" and ".join(paths) for paths in seen.values() if len(paths) > 1]
    assert not same, "test modules with one file name (rename one): " + "; ".join(same)


#: Where render-method code lives: the engines, the P2P library they call, and the render settings that
#: define the keys (and check an engine's settings through it).
ENGINE_HOMES = ("engines", "p2p", "pipeline/settings")
#: What modules that go through the engine interface may import of engines/ (never an engine's own module).
ENGINE_INTERFACE = ("editgen.engines.base", "editgen.engines.record", "editgen.engines.runtime",
                    "editgen.engines.regenerate")
#: Modules that must hold no engine-specific code: the render stage and the stages, shards and tools after it.
THROUGH_THE_INTERFACE = ("stages/render.py", "stages/filter.py", "stages/shard.py", "stages/fetch.py", "output/",
                         "cli/status.py", "cli/preview.py", "cli/validate.py", "cli/export_hf.py")


def _engine_names() -> set[str]:
    """The registry's keys, read from engines/__init__.py's REGISTRY literal."""
    for node in ast.walk(_tree(ROOT / "engines" / "__init__.py")):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError("engines/__init__.py has no REGISTRY dict")


def _engine_branches(path: Path, names: set[str]) -> list[str]:
    """`x == "p2p"` / `source == "real"` comparisons and `*.render.source` / `settings.source` reads."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Compare):
            consts = [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
            hit = [c for c in consts if c in names | {"real", "generated"}]
            if hit:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: compares with {hit[0]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in ("source", "real"):
            base = node.value
            owner = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""
            if owner in ("render", "settings", "s", "self"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: reads {owner}.{node.attr}")
    return found


def test_no_engine_specific_code_outside_the_engines():
    """The render stage, filter, shard, status, preview and regeneration go through engines/ (issue 21):
    no module outside the engines compares with an engine's name or a source kind or reads
    render.source, and the stages and tools after render import no engine's own module."""
    names = _engine_names()
    wrong = []
    for path in _sources(tests=False):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(ENGINE_HOMES):
            wrong += _engine_branches(path, names)
        if rel.startswith(THROUGH_THE_INTERFACE):
            wrong += [f"{rel}:{line}: imports {m} (go through {', '.join(ENGINE_INTERFACE)})"
                      for m, line in _imports(path) if _package(m) in ("p2p", "engines")
                      and not any(m == i or m.startswith(i + ".") for i in ENGINE_INTERFACE)]
    assert not wrong, "\n".join(wrong)
