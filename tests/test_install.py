"""A plain (non-editable) install carries the toy world: it loads from any directory, offline."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_loads_the_toy_world_elsewhere(tmp_path):
    target = tmp_path / "site"
    # what `pip install git+URL` does, without the network: build a wheel of the checkout and install it
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, text=True)
    assert (target / "smoothlib" / "shipped" / "toy" ).is_dir()
    code = ("import smoothlib as sl, smoothlib.toy as toy; "
            "assert toy.data_dir().is_relative_to(sl.__path__[0]), toy.data_dir(); "
            "w = sl.load_world('toy'); print(w.load_smooth_lora()); "
            "from smoothlib.toy.classifier import predict_digits; from smoothlib.toy import load_heldout_digits; "
            "d, l = load_heldout_digits(); assert (predict_digits(d[:50]) == l[:50]).float().mean() > 0.8; "
            "print(toy.repository_url())")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "smooth-fd-tb10-rel-lam0.3-8000steps-s0" in out.stdout and "https://github.com/smoothlib/smoothlib" in out.stdout
