"""The static walk scrubber: frames embedded in the page, a slider that swaps them without a kernel."""
import json
import re
import shutil
import subprocess

import pytest
import torch

from smoothlib.viz import scrubber_html

NODE = shutil.which("node")


def _frames(seed):
    return torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_every_frame_is_embedded_once_per_row():
    page = scrubber_html({"base": _frames(0), "smooth": _frames(1)}, captions=["a", "b", "c", "d"])
    frames = json.loads(re.search(r"const frames = (\[.*?\]\]),", page).group(1))
    assert [len(row) for row in frames] == [4, 4]
    assert len(set(frames[0]) | set(frames[1])) == 8   # distinct random frames, all present
    assert 'type="range" min="0" max="3"' in page and "://" not in page   # nothing to fetch


def test_bad_rows_and_captions_are_refused():
    with pytest.raises(ValueError, match="same number of frames"):
        scrubber_html({"base": _frames(0), "smooth": _frames(1)[:3]})
    with pytest.raises(ValueError, match="3 captions for 4 frames"):
        scrubber_html({"base": _frames(0)}, captions=["a", "b", "c"])


def test_a_caption_cannot_close_the_script():
    page = scrubber_html({"<b>base</b>": _frames(0)}, captions=["</script>", "b", "c", "d"])
    assert page.count("</script>") == 1 and "&lt;b&gt;base&lt;/b&gt;" in page


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's JavaScript")
def test_the_slider_shows_the_chosen_frame_in_every_row():
    """Run the page's script against a minimal DOM: moving the slider to frame 2 shows frame 2 in each row."""
    page = scrubber_html({"base": _frames(0), "smooth": _frames(1)}, captions=["a", "b", "c", "d"])
    script = re.search(r"<script>(.*)</script>", page, re.S).group(1)
    frames = json.loads(re.search(r"const frames = (\[.*?\]\]),", page).group(1))
    dom = """
const elements = {}, listeners = {};
const document = { getElementById(id) {
  if (!elements[id]) elements[id] = { id, src: "", value: "0", textContent: "",
      addEventListener(kind, f) { listeners[id + ":" + kind] = f; } };
  return elements[id]; } };
"""
    check = """
const key = Object.keys(elements).find(k => k.endsWith("-slider"));
elements[key].value = "2"; listeners[key + ":input"]();
const stem = key.slice(0, -"-slider".length);
console.log(JSON.stringify([elements[stem + "-0"].src, elements[stem + "-1"].src, elements[stem + "-label"].textContent]));
"""
    out = subprocess.run([NODE, "-e", dom + script + check], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [frames[0][2], frames[1][2], "c"]
