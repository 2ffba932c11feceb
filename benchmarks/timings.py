"""Where the time goes: the course per notebook and the test suite per test file, the slowest ten first.

    python benchmarks/timings.py course [--smoke]    # each notebook rendered as scripts/course.sh does
    python benchmarks/timings.py suite               # the test command's pytest runs, summed per file
    python benchmarks/timings.py both --json out.json

1. course: every notebook is executed and rendered (scripts/render_course.py's ``render_all``,
   ``--jobs`` side by side as scripts/course.sh runs them) in the toy world, full mode unless
   ``--smoke``; one time per notebook;
2. suite: the two pytest runs of scripts/test.sh (the library's tests, the toy world's notebooks
   rendered among them by tests/test_render.py, then the notebooks under nbval in the Stable
   Diffusion stand-in, float16), on pytest-xdist's workers as there, with ``--junitxml``; each
   test's time is summed per file (a notebook under nbval is one file, its cells its tests), so
   with several workers the parts add up to more than the wall time;
3. printed: each part's seconds, the slowest ten, the total and the wall time. Run it on an idle
   machine, or compare two runs made under the same load: on a busy 2-core machine everything
   takes 2 to 3 times as long, and only ratios within one run are meaningful.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def course_times(smoke: bool, jobs: int) -> dict[str, float]:
    """Seconds per notebook, rendered into build/timings/course/ as scripts/course.sh does (``jobs`` side by side)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from render_course import notebooks, render_all

    os.environ.pop("MPLBACKEND", None)
    os.environ.update(OFFLINE, SMOOTHLIB_WORLD="toy", SMOOTHLIB_SMOKE="1" if smoke else "0")
    out = ROOT / "build" / "timings" / "course"
    return {path.name: seconds for path, seconds in render_all(notebooks(), out, jobs, report=True).items()}


WORKERS = ["-n", "auto", "--maxprocesses", "8"]
"""pytest-xdist's workers, as scripts/test.sh starts them."""


def _pytest(args: list[str], env: dict, junit: Path) -> None:
    cmd = [sys.executable, "-m", "pytest", *args, *WORKERS, "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
           f"--junitxml={junit}"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=False)


def _per_file(junit: Path, prefix: str = "") -> dict[str, float]:
    times: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("file") or case.get("classname", "?").replace(".", "/") + ".py"
        times[prefix + name] += float(case.get("time", 0))
    return dict(times)


def suite_times() -> dict[str, float]:
    """Seconds per test file (and per notebook in each world), as scripts/test.sh runs them."""
    out = ROOT / "build" / "timings"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **OFFLINE, SMOOTHLIB_SMOKE="1", MPLBACKEND="Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    _pytest(["tests", "--dist", "worksteal"], env, out / "toy.xml")
    times = _per_file(out / "toy.xml")
    subprocess.run([sys.executable, "scripts/make_sd_world.py", "build/sd_world"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    sd = ROOT / "build" / "sd_world"
    env.update(SMOOTHLIB_WORLD=str(sd / "stable-diffusion-v1-5"), SMOOTHLIB_DTYPE="fp16",
               SMOOTHLIB_SMOOTH_LORA=str(sd / "smooth-diffusion-lora"))
    _pytest(["--nbval-lax", "--nbval-current-env", "notebooks", "--dist", "loadscope"], env, out / "sd.xml")
    times.update(_per_file(out / "sd.xml", prefix="SD stand-in: "))
    return times


def report(title: str, times: dict[str, float], wall: float) -> None:
    print(f"\n{title}: {sum(times.values()):.0f} s in {len(times)} parts, {wall:.0f} s wall")
    print("| slowest | seconds | share |\n| --- | --- | --- |")
    total = sum(times.values()) or 1.0
    for name, seconds in sorted(times.items(), key=lambda kv: -kv[1])[:10]:
        print(f"| {name} | {seconds:.0f} | {seconds / total:.0%} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("course", "suite", "both"))
    parser.add_argument("--smoke", action="store_true", help="the course in smoke mode (CI-sized step counts)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="notebooks side by side, as scripts/course.sh runs them (default: one per core)")
    parser.add_argument("--json", type=Path, help="also write the times to this file")
    args = parser.parse_args(argv)
    results = {}
    for part, measure in (("course", lambda: course_times(args.smoke, args.jobs)), ("suite", suite_times)):
        if args.what in (part, "both"):
            start = time.perf_counter()
            times = measure()
            results[part] = {"parts": times, "wall": time.perf_counter() - start}
            report(part + (" (smoke)" if part == "course" and args.smoke else ""), times, results[part]["wall"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
