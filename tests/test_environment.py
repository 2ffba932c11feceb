"""environment.yml and pyproject.toml must ask for the same packages and ranges."""
import re
from pathlib import Path

import yaml

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _normalise(req: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), spec.replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = dict(_normalise(r) for r in pip_list if not r.startswith("-e"))
    assert listed == wanted
    assert "-e .[dev]" in pip_list
    assert "pip" in env["dependencies"]
    assert not any("torchvision" in r for r in pip_list)


def test_no_torchvision_dependency():
    text = (ROOT / "pyproject.toml").read_text()
    assert "torchvision" not in text
