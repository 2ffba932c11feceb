"""Execute the course's notebooks top to bottom and render each to HTML.

    python scripts/render_course.py --out build/course            # the whole course
    python scripts/render_course.py --smoke 01_non_smoothness     # one notebook, CI-sized
    python scripts/render_course.py --jobs 1                      # one notebook at a time

Each notebook runs on a fresh kernel in this Python environment; its
parameter cell reads ``SMOOTHLIB_WORLD`` and ``SMOOTHLIB_SMOKE`` from the
environment, which this command sets. The notebooks are independent, so
``--jobs`` of them (one per CPU core by default) run side by side, each kernel
with an equal share of the cores as torch threads: most of a notebook's work is
small tensors that one thread runs almost as fast as two.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
"""The repository's notebooks/ (this script lives in scripts/)."""


def notebooks(directory: Path = NOTEBOOKS, select: list[str] | None = None) -> list[Path]:
    """The course's notebooks in order (file names start with their number)."""
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))
    if select:
        found = [p for p in found if any(s in p.stem for s in select)]
        if not found:
            raise SystemExit(f"no notebook in {directory} matches {select}")
    return found


class Rendered(NamedTuple):
    page: Path
    """The HTML page."""
    notebook: Any
    """The executed notebook, outputs included."""
    seconds: float
    """Wall time of the execution."""


WIDGET_NOTE = ("[an ipywidgets control: it runs in Jupyter, Colab or VS Code with a kernel; "
               "on this page the scrubber and grids below show the same frames]")
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"


def render(path: Path, out_dir: Path, timeout: int = 3600) -> Rendered:
    """Execute one notebook and write ``out_dir/<name>.html``, a page that works offline.

    1. execute the notebook on a fresh kernel (:func:`execute`);
    2. replace each live widget's output by a note (:func:`static_widgets`): without a kernel
       a widget needs the widget manager's JavaScript from a CDN, and shows nothing offline;
    3. point the page at a local MathJax (:func:`local_mathjax`, copied next to it) instead of
       the exporter's CDN, and load no require.js (only widgets need it);
    4. write the HTML page.
    """
    from nbconvert import HTMLExporter

    nb, seconds = execute(path, timeout)
    static_widgets(nb)
    exporter = HTMLExporter(mathjax_url=f"{local_mathjax(out_dir)}/MathJax.js?config={MATHJAX_CONFIG}",
                            require_js_url="data:text/javascript,")
    html, _ = exporter.from_notebook_node(nb)
    page = out_dir / f"{path.stem}.html"
    page.write_text(html, encoding="utf-8")
    return Rendered(page, nb, seconds)


def static_widgets(nb) -> int:
    """Replace every widget view among the outputs by :data:`WIDGET_NOTE`; drop the saved widget state.

    Returns how many outputs were replaced.
    """
    replaced = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                out["data"] = {"text/plain": WIDGET_NOTE}
                replaced += 1
    nb.metadata.pop("widgets", None)
    return replaced


def local_mathjax(out_dir: Path) -> str:
    """Copy MathJax 2.7 (from the ``jupyter-server-mathjax`` package) to ``out_dir/mathjax`` once;
    return the folder's name, relative to the pages, so that formulas render without a network."""
    import shutil

    import jupyter_server_mathjax

    target = out_dir / "mathjax"
    if not (target / "MathJax.js").is_file():
        source = Path(jupyter_server_mathjax.__file__).parent / "static"
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target.name


def execute(path: Path, timeout: int = 3600):
    """Run one notebook on a fresh kernel; return it with its outputs, and the wall time in seconds.

    ``MPLBACKEND`` is removed from the kernel's environment for the run: set (to Agg, say) it
    stops ipykernel from switching matplotlib to its inline backend, and ``plt.show()`` then
    draws nothing into the page.
    """
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    backend = os.environ.pop("MPLBACKEND", None)
    start = time.perf_counter()
    try:
        ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
    return nb, time.perf_counter() - start


def expected_images(cell) -> int:
    """How many pictures a code cell draws at least: one per ``plt.show()`` and per embedded GIF."""
    source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    return source.count("plt.show()") + source.count("data:image/gif")


def images_in(cell) -> int:
    """Pictures among a code cell's outputs (PNG, JPEG, SVG, or an embedded image in HTML)."""
    count = 0
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if any(k in data for k in ("image/png", "image/jpeg", "image/svg+xml")):
            count += 1
        count += str(data.get("text/html", "")).count("<img src=\"data:image/")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("select", nargs="*", help="run only notebooks whose name contains one of these")
    parser.add_argument("--out", type=Path, default=Path("build/course"), help="folder for the HTML pages")
    parser.add_argument("--world", default="toy", help='"toy" (default, CPU, offline), "auto", "sd15" or a repo id')
    parser.add_argument("--smoke", action="store_true", help="CI-sized step counts")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="notebooks executed side by side (default: one per CPU core)")
    args = parser.parse_args(argv)

    os.environ["SMOOTHLIB_WORLD"] = args.world
    os.environ["SMOOTHLIB_SMOKE"] = "1" if args.smoke else "0"
    args.out.mkdir(parents=True, exist_ok=True)
    paths = notebooks(select=args.select)
    if not paths:
        print(f"no notebooks in {NOTEBOOKS}")
        return 0
    total = time.perf_counter()
    render_all(paths, args.out, args.jobs, report=True)
    print(f"course rendered to {args.out}/ in {time.perf_counter() - total:.0f} s")
    return 0


def render_all(paths: list[Path], out_dir: Path, jobs: int, report: bool = False) -> dict[Path, float]:
    """Render ``paths`` into ``out_dir``, ``jobs`` side by side; return each notebook's seconds.

    1. copy MathJax beside the pages once (:func:`local_mathjax`), before any worker needs it;
    2. give each kernel an equal share of the cores as torch threads (``OMP_NUM_THREADS``,
       unless already set);
    3. execute and render each notebook in a worker process (:func:`render`), in course order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    local_mathjax(out_dir)
    jobs = max(1, min(jobs, len(paths)))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    if report:
        print(f"{len(paths)} notebooks, {jobs} at a time, {os.environ['OMP_NUM_THREADS']} torch thread(s) each",
              flush=True)
    seconds = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        runs = {path: pool.submit(_render_seconds, path, out_dir) for path in paths}
        for i, (path, run) in enumerate(runs.items(), 1):
            seconds[path] = run.result()
            if report:
                print(f"[{i}/{len(paths)}] {path.name} done in {seconds[path]:.0f} s -> "
                      f"{out_dir / (path.stem + '.html')}", flush=True)
    return seconds


def _render_seconds(path: Path, out_dir: Path) -> float:
    """:func:`render` in a worker process; only the time comes back."""
    return render(path, out_dir).seconds


if __name__ == "__main__":
    sys.exit(main())
