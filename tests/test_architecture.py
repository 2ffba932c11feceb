"""The package's layout rules, read from the source: no import circle, small modules, a core that knows no toy.

Imports are collected statically (every ``import`` and ``from ... import`` anywhere in a module,
function-level ones included), so a circle hidden in a function body counts too.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smoothlib"
ROOT = PACKAGE.parent

CORE = ("prediction", "ddim", "interpolate", "attention", "regularizer", "running_mean", "train_step",
        "metrics", "inversion", "walks", "editing", "drag")
"""The paper's modules: the diffusion core, the regularizer and the downstream tasks."""
NOT_IN_CORE = ("toy", "lesson", "testing")
"""What the core must not reach, even through other modules: the bundled world (its classifier
included), the notebooks' settings and the test helpers."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "shipped" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The smoothlib modules ``name`` imports (a package import counts as its __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in g[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_circle_inside_smoothlib():
    g = graph()
    # a package's __init__ re-exporting its own modules is not a circle of ideas; every other edge counts
    edges = {m: {n for n in deps if not (m.startswith(n + ".") and n in g and modules()[n].name == "__init__.py")}
             for m, deps in g.items()}
    circles = sorted(m for m in edges if m in reachable(edges, m))
    assert circles == [], f"modules that import themselves through others: {circles}"


def test_no_module_over_350_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 350}
    assert long == {}


@pytest.mark.parametrize("core", CORE)
def test_the_paper_core_knows_no_toy_world_lesson_or_test_helper(core):
    g = graph()
    reached = reachable(g, f"smoothlib.{core}")
    bad = sorted(m for m in reached if any(m == f"smoothlib.{x}" or m.startswith(f"smoothlib.{x}.") for x in NOT_IN_CORE))
    assert bad == [], f"smoothlib.{core} reaches {bad}"


def test_the_notebook_runner_is_not_part_of_the_package():
    assert not (PACKAGE / "course.py").exists()


def test_the_regularizer_its_equation_and_its_test_name_each_other():
    code, doc, test = PACKAGE / "regularizer.py", ROOT / "docs" / "regularizer.md", ROOT / "tests" / "test_regularizer.py"
    texts = {p: p.read_text() for p in (code, doc, test)}
    assert "tests/test_regularizer.py" in texts[code] and "docs/regularizer.md" in texts[code]
    assert "smoothlib/regularizer.py" in texts[doc] and "tests/test_regularizer.py" in texts[doc]
    assert "smoothlib/regularizer.py" in texts[test] and "docs/regularizer.md" in texts[test]
    assert "explicit Jacobian" in texts[test] and "a vector-Jacobian product" in texts[doc]
