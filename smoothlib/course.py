"""Execute the course's notebooks top to bottom and render each to HTML.

    python -m smoothlib.course --out build/course            # the whole course
    python -m smoothlib.course --smoke 01_non_smoothness     # one notebook, CI-sized

Each notebook runs on a fresh kernel in this Python environment; its
parameter cell reads ``SMOOTHLIB_WORLD`` and ``SMOOTHLIB_SMOKE`` from the
environment, which this command sets.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebooks(directory: Path = NOTEBOOKS, select: list[str] | None = None) -> list[Path]:
    """The course's notebooks in order (file names start with their number)."""
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))
    if select:
        found = [p for p in found if any(s in p.stem for s in select)]
        if not found:
            raise SystemExit(f"no notebook in {directory} matches {select}")
    return found


def render(path: Path, out_dir: Path, timeout: int = 3600) -> float:
    """Execute one notebook and write ``out_dir/<name>.html``; return the wall time in seconds."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
    elapsed = time.perf_counter() - start
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out_dir / f"{path.stem}.html").write_text(html, encoding="utf-8")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("select", nargs="*", help="run only notebooks whose name contains one of these")
    parser.add_argument("--out", type=Path, default=Path("build/course"), help="folder for the HTML pages")
    parser.add_argument("--world", default="toy", help='"toy" (default, CPU, offline), "auto", "sd15" or a repo id')
    parser.add_argument("--smoke", action="store_true", help="CI-sized step counts")
    args = parser.parse_args(argv)

    os.environ["SMOOTHLIB_WORLD"] = args.world
    os.environ["SMOOTHLIB_SMOKE"] = "1" if args.smoke else "0"
    args.out.mkdir(parents=True, exist_ok=True)
    paths = notebooks(select=args.select)
    if not paths:
        print(f"no notebooks in {NOTEBOOKS}")
        return 0
    total = time.perf_counter()
    for i, path in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {path.name} ...", end=" ", flush=True)
        seconds = render(path, args.out)
        print(f"done in {seconds:.0f} s -> {args.out / (path.stem + '.html')}", flush=True)
    print(f"course rendered to {args.out}/ in {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
