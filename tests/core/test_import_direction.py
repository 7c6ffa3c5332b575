"""The package's imports follow docs/architecture.md: read every module's imports (top-level and
inside functions) and fail on a forbidden direction or a cycle between packages."""

from __future__ import annotations

import ast
from pathlib import Path

import crystalvlm

ROOT = Path(crystalvlm.__file__).parent

# Which packages each package may import (besides itself). `reporting` (HTML helpers) and `markers`
# (the `<image>` token, which data formats and models share) are leaves everyone may use.
LEAVES = {"reporting", "markers", "subimage_grid"}
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "data": set(),
    "web2code": {"data"},
    "train": {"models", "data", "reporting"},
    "infer": {"models", "data"},
    "eval": {"infer", "models", "data", "web2code", "reporting"},
    "dataengine": {"models", "data", "train", "infer", "eval", "web2code", "reporting"},
    "worlds": {"models", "data", "train", "infer", "eval", "web2code", "dataengine", "reporting"},
    "cli": {"models", "data", "train", "infer", "eval", "web2code", "dataengine", "worlds", "reporting"},
}


def package_of(module: str) -> str | None:
    """`crystalvlm.eval.tasks.pope` -> "eval"; None for modules outside crystalvlm."""
    parts = module.split(".")
    if parts[0] != "crystalvlm":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """Every crystalvlm module `path` (inside the package folder `root`) imports, with the line,
    resolving relative imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = ["crystalvlm", *path.relative_to(root).with_suffix("").parts]
    if here[-1] == "__init__":
        here = here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + (1 if path.name == "__init__.py" else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            # `from crystalvlm import eval` imports a package too
            if module == "crystalvlm":
                found += [(f"crystalvlm.{alias.name}", node.lineno) for alias in node.names
                          if not alias.name.startswith("__")]
    return [(name, line) for name, line in found if name.startswith("crystalvlm")]


def package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        source = package_of("crystalvlm." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
        for module, line in imported_modules(path):
            target = package_of(module)
            if target in (None, "__init__") or target == source:
                continue
            edges.setdefault((source, target), []).append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return edges


def test_every_package_is_listed_in_the_allowed_directions():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert packages <= set(ALLOWED) | LEAVES, f"new package(s) {sorted(packages - set(ALLOWED))}: add them to ALLOWED and docs"


def test_imports_follow_the_allowed_directions():
    forbidden = [where for (source, target), places in package_edges().items()
                 if target not in ALLOWED.get(source, set()) | LEAVES for where in places]
    assert not forbidden, "forbidden imports:\n" + "\n".join(forbidden)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for source, target in package_edges():
        graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt in LEAVES:
                continue
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert not cycles, f"package cycles: {cycles}"


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The reader itself: a lazy import inside a function and a relative import both count."""
    module = tmp_path / "data" / "probe.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from crystalvlm.worlds import base\nfrom ..models import build\n")
    found = dict(imported_modules(module, root=tmp_path))
    assert "crystalvlm.worlds" in found and "crystalvlm.models" in found
