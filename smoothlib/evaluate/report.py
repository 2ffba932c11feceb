"""The evaluation's report: ``report.json`` (everything), ``report.md`` (a table as in the README), ``figure.png``.

ISTD (Table 1): per model the mean ISTD with its standard error, the mean adjacent step and end
distance, ISTD / mean step, the world's quality columns, and the change of mean ISTD against the
base and against the control, paired walk by walk (:func:`smoothlib.toy.evaluation.paired_change`:
mean(model - reference) / mean(reference), s.e. from the paired differences). The figure puts
ISTD (with its error bar) against the quality measure (the Frechet distance on the toy world,
the mean adjacent step elsewhere), one labelled point per model.

Reconstruction (Table 2): per model and method the mean MSE, PSNR, SSIM (LPIPS when measured) and
seconds per image; the figure is a bar chart of PSNR and SSIM.
"""
from __future__ import annotations

import json
from pathlib import Path


def istd_changes(entries: list[dict]) -> dict[str, dict]:
    """Per model label: {"vs_base": [change, s.e.], "vs_control": [...]} (absent for the reference itself)."""
    from ..toy.evaluation import paired_change

    walks = {e["role"]: [w["istd"] for w in e["items"]] for e in entries if e["role"] in ("base", "control")}
    changes = {}
    for e in entries:
        mine, row = [w["istd"] for w in e["items"]], {}
        for role in ("base", "control"):
            if role in walks and e["role"] != role and not (role == "control" and e["role"] == "base"):
                row[f"vs_{role}"] = list(paired_change(mine, walks[role]))
        changes[e["label"]] = row
    return changes


def _change(row: dict, key: str) -> str:
    return f"{100 * row[key][0]:+.1f} % ({100 * row[key][1]:.1f})" if key in row else ""


def istd_table(entries: list[dict], changes: dict[str, dict]) -> str:
    """The Markdown table of Table 1."""
    quality = "frechet" in entries[0]["summary"]
    head = ["model", "ISTD (s.e.)", "vs base", "vs control", "step / ends", "ISTD / step"]
    head += ["adherence", "Frechet"] if quality else []
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in entries:
        s = e["summary"]
        row = [e["label"], f"{s['istd']:.4f} ({s['istd_stderr']:.4f})", _change(changes[e["label"]], "vs_base"),
               _change(changes[e["label"]], "vs_control"), f"{s['mean_step']:.3f} / {s['end_distance']:.3f}",
               f"{s['istd_per_step']:.3f}"]
        row += [f"{s['adherence']:.3f}", f"{s['frechet']:.1f}"] if quality else []
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


METHOD_NAMES = {"vae": "encode-decode", "ddim": "DDIM", "nti": "null-text"}


def reconstruction_table(entries: list[dict]) -> str:
    """The Markdown table of Table 2: one row per model and method."""
    methods = [m for m in entries[0]["summary"] if m != "num_images"]
    lpips = any("lpips" in e["summary"][m] for e in entries for m in methods)
    head = ["model", "inversion", "MSE", "PSNR (dB)", "SSIM"] + (["LPIPS"] if lpips else []) + ["s / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in entries:
        for m in methods:
            d = e["summary"][m]
            row = [e["label"], METHOD_NAMES.get(m, m), f"{d['mse']:.4f}", f"{d['psnr']:.2f}", f"{d['ssim']:.4f}"]
            row += [f"{d['lpips']:.4f}" if "lpips" in d else ""] if lpips else []
            row.append(f"{d['seconds']:.2f}" if "seconds" in d else "")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def istd_figure(entries: list[dict], path: Path) -> None:
    """ISTD (error bar: s.e.) against the Frechet distance (toy) or the mean adjacent step, a labelled point per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "frechet" if "frechet" in entries[0]["summary"] else "mean_step"
    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    for e in entries:
        s = e["summary"]
        ax.errorbar(s[x_key], s["istd"], yerr=s["istd_stderr"], fmt="o", capsize=3)
        ax.annotate(e["label"], (s[x_key], s["istd"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("Frechet distance to held-out digits (lower is better)" if x_key == "frechet"
                  else "mean adjacent step (pixels in [0, 1])")
    ax.set_ylabel("ISTD (lower is smoother), +- s.e.")
    ax.set_title(f"ISTD against {'quality' if x_key == 'frechet' else 'walk scale'}, "
                 f"{entries[0]['summary']['num_walks']} walks")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reconstruction_figure(entries: list[dict], path: Path) -> None:
    """Bar charts of PSNR and SSIM, one group per method, one bar per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in entries[0]["summary"] if m != "num_images"]
    width = 0.8 / len(entries)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), layout="constrained")
    for ax, key, name in zip(axes, ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
        for k, e in enumerate(entries):
            xs = [j + (k - (len(entries) - 1) / 2) * width for j in range(len(methods))]
            ax.bar(xs, [e["summary"][m][key] for m in methods], width, label=e["label"])
        ax.set_xticks(range(len(methods)), [METHOD_NAMES.get(m, m) for m in methods])
        ax.set_ylabel(name + " (higher is better)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    fig.suptitle(f"reconstruction, {entries[0]['summary']['num_images']} images")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: str | Path, protocol: str, header: dict, entries: list[dict]) -> dict:
    """Write report.json, report.md and figure.png into ``out``; return the JSON object."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [{k: e[k] for k in ("label", "role", "source", "cached", "summary", "items", "key")} for e in entries]
    report = {"protocol": protocol, **header, "models": models}
    if protocol == "istd":
        report["changes"] = changes = istd_changes(entries)
        table = istd_table(entries, changes)
        istd_figure(entries, out / "figure.png")
    else:
        table = reconstruction_table(entries)
        reconstruction_figure(entries, out / "figure.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"# {header['title']}", "", header["description"], "", table, ""]
    (out / "report.md").write_text("\n".join(lines))
    return report
