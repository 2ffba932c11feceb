"""The rendered course as a reader sees it: every notebook executes in the toy world (smoke mode) and
its page carries every picture its cells draw (a ``plt.show()`` that draws nothing fails here)."""
import re

import pytest

from render_course import WIDGET_NOTE, expected_images, images_in, notebooks, render  # scripts/, see conftest.py

NOTEBOOKS = notebooks()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_rendered_page_has_every_figure(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHLIB_WORLD", "toy")
    monkeypatch.setenv("SMOOTHLIB_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")   # as the test command sets it: the renderer must undo it for the kernel
    page, nb, _ = render(path, tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    missing = [(i, expected_images(c), images_in(c)) for i, c in enumerate(nb.cells)
               if c.cell_type == "code" and images_in(c) < expected_images(c)]
    assert not missing, f"cells (index, pictures drawn, pictures in the output) without their pictures: {missing}"
    html = page.read_text()
    assert len(re.findall(r'src="data:image/', html)) >= sum(expected_images(c) for c in code)
    assert "<IPython.core.display.Image object>" not in html
    # offline: no script from the network, formulas from the MathJax copied beside the page
    assert not re.findall(r'<script[^>]+src="https?://', html), "the page loads a script from the network"
    assert 'src="mathjax/MathJax.js?config=' in html and (page.parent / "mathjax" / "MathJax.js").is_file()
    assert "application/vnd.jupyter.widget-view+json" not in html   # a widget would need a kernel or a CDN
    if "ipywidgets" in "".join(c.source for c in code):
        assert WIDGET_NOTE in html
    if "scrubber_html(" in "".join(c.source for c in code):   # the walk scrubber works on the page
        assert re.search(r'<input id="scrub\w+-slider"[^>]*type="range"', html) and "const frames" in html
    # nothing on stderr: no warnings, no progress bars on the page
    noisy = [(i, "".join(o.get("text", ""))[:200]) for i, c in enumerate(nb.cells) if c.cell_type == "code"
             for o in c.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not noisy, f"cells writing to stderr (index, text): {noisy}"
