"""The layout's rules, read from the code's imports (every import, also those inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "jobs", "models", "bench")

# Stages of pipeline/ in the order data flows: a module imports only modules of an earlier
# rank, or of its own package. The store and the Spark session are below every stage.
RANKS = {
    "pipeline.spark": -1, "pipeline.ordering": -1, "pipeline.store": 0,
    "pipeline.ingest": 1,
    "pipeline.graph": 2,
    "pipeline.detectors": 3, "pipeline.relationships": 3,
    "pipeline.verdict": 4,
    "pipeline.evaluation": 5,
    "pipeline.report": 6,
    "pipeline.sql": 7, "pipeline.evaluate": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that ``path`` imports (``from a import b``: ``a.b`` when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _rank(module: str) -> int | None:
    for prefix, rank in RANKS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def _stage(module: str) -> str:
    return next(p for p in RANKS if module == p or module.startswith(p + "."))


def test_no_module_imports_itself_back_through_others():
    graph, cycles = _graph(), []
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_imports_go_one_way_bench_jobs_stages_store():
    graph = _graph()
    upward = sorted(
        (source, target) for source, targets in graph.items() for target in targets
        if (source.startswith("models") and not target.startswith("models"))
        or (source.startswith(("pipeline", "models")) and target.startswith(("jobs", "bench")))
        or (source.startswith("jobs") and target.startswith("bench"))
    )
    assert upward == []


def test_a_stage_imports_only_earlier_stages_and_the_store():
    graph = _graph()
    backwards = sorted(
        (source, target) for source, targets in graph.items() if _rank(source) is not None
        for target in targets if _rank(target) is not None
        and _stage(target) != _stage(source) and _rank(target) >= _rank(source)
    )
    assert backwards == []
