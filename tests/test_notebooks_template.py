"""Every course notebook follows the template (COURSE.md): badge, setup cell, parameter cell, no outputs."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_template(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    sources = ["".join(c["source"]) for c in cells]
    badge = f"colab.research.google.com/github/smoothlib/smoothlib/blob/main/notebooks/{path.name}"
    assert cells[0]["cell_type"] == "markdown" and sources[0].startswith("# ")
    assert badge in sources[0], "Open in Colab badge missing from the title cell"
    assert badge in README, "README's course table lacks this notebook's Colab link"
    assert "google.colab" in sources[1] and "pip" in sources[1], "second cell must be the setup cell"
    assert "SMOOTHLIB_WORLD" in sources[2] and "SMOOTHLIB_SMOKE" in sources[2], "third cell must be the parameter cell"
    assert "## Summary" in "\n".join(sources) and "## Exercises" in "\n".join(sources)
    for c in cells:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, "commit notebooks without outputs"
            assert not re.search(r"""["']cuda["']""", "".join(c["source"])), "no hard-coded 'cuda': use sl.default_device()"
    assert nb["metadata"].get("accelerator") == "GPU"
