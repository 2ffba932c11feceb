"""Every course notebook follows the template: badge, setup cell, parameter cell, no outputs."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (ROOT / "README.md").read_text()


def repository() -> str:
    """The repository's address, from the one place it is written: pyproject.toml's [project.urls]."""
    import tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_template(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    sources = ["".join(c["source"]) for c in cells]
    owner_name = repository().removeprefix("https://github.com/")
    badge = f"colab.research.google.com/github/{owner_name}/blob/main/notebooks/{path.name}"
    assert cells[0]["cell_type"] == "markdown" and sources[0].startswith("# ")
    assert badge in sources[0], "Open in Colab badge missing from the title cell"
    assert badge in README, "README's course table lacks this notebook's Colab link"
    assert "google.colab" in sources[1] and "pip" in sources[1], "second cell must be the setup cell"
    installs = re.findall(r"%pip install .*", sources[1])
    assert installs == [f'%pip install -q "smoothlib[course] @ git+{repository()}"'], \
        "the setup cell installs the package from the repository, in one %pip line"
    assert "ImportError" in sources[1] and "SystemExit" in sources[1], "a failed install must stop the notebook"
    assert "git clone" not in sources[1]
    assert "SMOOTHLIB_WORLD" in sources[2] and "SMOOTHLIB_SMOKE" in sources[2], "third cell must be the parameter cell"
    if "load_world(" in "\n".join(sources):
        for variable in ("SMOOTHLIB_DTYPE", "SMOOTHLIB_SMOOTH_LORA", "SMOOTHLIB_PAPER"):
            assert variable in sources[2], f"the parameter cell reads {variable}"
        assert "load_world(WORLD, dtype=DTYPE, smooth_lora=SMOOTH_LORA)" in "\n".join(sources)
    assert "## Summary" in "\n".join(sources) and "## Exercises" in "\n".join(sources)
    for c in cells:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, "commit notebooks without outputs"
            assert not re.search(r"""["']cuda["']""", "".join(c["source"])), "no hard-coded 'cuda': use sl.default_device()"
    assert nb["metadata"].get("accelerator") == "GPU"


def test_readme_installs_from_the_repository():
    assert f'"smoothlib[course] @ git+{repository()}"' in README


LINKED = NOTEBOOKS + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _text(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    return path.read_text()


@pytest.mark.parametrize("path", LINKED, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(path):
    """Every relative Markdown link (to a notebook, doc, script or image) names a file of the repository."""
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(path)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = (path.parent / target.split("#", 1)[0]).resolve()
        assert file.exists() and file.is_relative_to(ROOT), f"{path.name} links to {target}, which is not in the repository"


@pytest.mark.parametrize("path", LINKED + sorted((ROOT / "smoothlib").glob("*.py")) + sorted((ROOT / "tests").glob("*.py")),
                         ids=lambda p: p.name)
def test_nothing_cites_files_outside_the_repository(path):
    text = _text(path) if path.name != Path(__file__).name else ""
    for outside in ("SPEC.md", "SPEC section", "COURSE.md", "../shared"):
        assert outside not in text, f"{path.name} cites {outside!r}, which readers of the repository do not have"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_have_solutions_and_the_body_asks_to_predict(path):
    """Every exercise is followed by a collapsed solution; at least one "predict, then run" question,
    answered in a collapsed block after the cell that runs it; every cell has an id (nbformat 4.5)."""
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells]
    assert all("id" in c for c in cells), "cells without an id (nbformat 4.5 requires them)"
    text = "\n".join(sources)
    exercises = text[text.index("## Exercises"):text.index("## Summary")]
    numbered = re.findall(r"^\d+\. ", exercises, re.M)
    solutions = exercises.count("<details><summary>Solution</summary>")
    assert numbered and solutions == len(numbered), f"{len(numbered)} exercises but {solutions} solutions"
    asks = [i for i, s in enumerate(sources) if "**Predict, then run.**" in s]
    assert asks, "no 'Predict, then run' question"
    for i in asks:
        later = sources[i + 1:]
        assert cells[i + 1]["cell_type"] == "code", f"cell {i} asks for a prediction, but no code cell follows"
        assert any("<details><summary>Answer</summary>" in s for s in later[:3]), \
            f"cell {i}'s prediction question has no answer block within the next cells"
