"""Render a GPU-proof result (tools/bench_gpu_proof.py) as Markdown tables and a PNG chart for the README.

    python tools/render_benchmarks.py benchmarks/gpu-proof-h100.json --markdown - --png docs/gpu-proof.png

Every figure comes from the JSON; the tables name the command and commit that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GIB = 1024**3


def _gib(value) -> str:
    return f"{value / GIB:.2f}" if value else "-"


def _ratio(value) -> str:
    return f"{value:.2f}x" if value else "-"


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [(f"Measured on {env.get('device')} (driver {env.get('driver')}, torch {env.get('torch')}, CUDA "
             f"{env.get('cuda')}, bitsandbytes {env.get('bitsandbytes')}) at commit `{record['commit'][:10]}`: "
             f"`{record['command']}`; median of {record['steps']} steps after {record['warmup']} warm-up."), ""]
    for family, section in record["families"].items():
        summary = section["summary"]
        base = section["baseline"]
        lines += [f"**{family} at {section['resolution']} px, batch {section['batch']}, rank {section['rank']}**", "",
                  "| strategy | peak VRAM GiB (reserved + context) | s/step | speed vs usual way | estimate error |",
                  "|---|---|---|---|---|",
                  (f"| usual way (diffusers example defaults) | {_gib(base.get('peak_reserved_plus_context'))} | "
                  f"{base.get('seconds_per_step', 0):.3f} | 1.00x | - |")]
        rows = {r["strategy"]: r for r in summary["strategies"]}
        for run in sorted(section["strategies"], key=lambda r: r.get("peak_reserved_plus_context") or 1e30):
            row = rows[run["strategy"]]
            error = f"{row['estimate_error']:+.0%}" if "estimate_error" in row else "-"
            seconds = f"{run['seconds_per_step']:.3f}" if run.get("ok") else run.get("error", "failed")[:40]
            lines.append(f"| {run['strategy']} | {_gib(run.get('peak_reserved_plus_context'))} | {seconds} | "
                         f"{_ratio(row.get('speed_vs_baseline'))} | {error} |")
        lines += ["", ("| budget | strategies that fit | fastest that fit | `--auto` chose | `--auto` vs fastest | "
                  "`--auto` OOM events |"), "|---|---|---|---|---|---|"]
        for row in summary["budgets"]:
            budget = f"{row['budget_gb']:g} GiB" if row["budget_gb"] else "unlimited"
            lines.append(f"| {budget} | {len(row['fitting'])} | {row['fastest'] or 'none'} | "
                         f"{row.get('auto_choice', '-')} | {_ratio(row.get('auto_vs_fastest'))} | "
                         f"{row.get('auto_out_of_memory_events', '-')} |")
        lines.append("")
    return "\n".join(lines)


def chart(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(record["families"].items())
    figure, axes = plt.subplots(len(families), 2, figsize=(13, 0.32 * max(len(s["strategies"]) for _, s in families)
                                                          * len(families) + 1.5), squeeze=False)
    for (family, section), (memory_axis, speed_axis) in zip(families, axes):
        runs = [r for r in section["strategies"] if r.get("ok")]
        runs.sort(key=lambda r: r.get("peak_reserved_plus_context") or r.get("peak_allocated") or 0)
        labels = ["usual way", *[r["strategy"] for r in runs]]
        base = section["baseline"]
        memory = [(r.get("peak_reserved_plus_context") or 0) / GIB for r in [base, *runs]]
        speed = [r.get("seconds_per_step") or 0 for r in [base, *runs]]
        colours = ["#999999", *["#3b7dd8"] * len(runs)]
        memory_axis.barh(labels, memory, color=colours)
        memory_axis.set_title(f"{family} {section['resolution']} px: peak VRAM (GiB, reserved + context)")
        for budget in record["budgets_gb"]:
            if budget:
                memory_axis.axvline(budget, color="#d83b3b", linewidth=0.6, linestyle=":")
        speed_axis.barh(labels, speed, color=colours)
        speed_axis.set_title(f"{family} {section['resolution']} px: seconds per step (lower is faster)")
        speed_axis.set_yticklabels([])
        for axis in (memory_axis, speed_axis):
            axis.invert_yaxis()
            axis.tick_params(labelsize=7)
    figure.suptitle(f"lowvram on {record['environment'].get('device')} (commit {record['commit'][:10]})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def merge(records: list[dict]) -> dict:
    """Results of several runs on one device as one record (each family from the last run that has it)."""
    devices = {r["environment"].get("device") for r in records}
    if len(devices) > 1:
        raise SystemExit(f"results from different devices ({', '.join(map(str, devices))}) do not compare")
    from bench_gpu_proof import summarize

    merged = dict(records[-1])
    merged["families"] = {}
    for record in records:  # a family measured over several calls: strategies from one, --auto from another
        for name, section in record["families"].items():
            into = merged["families"].setdefault(name, dict(section))
            for key in ("strategies", "capped", "auto"):
                if section.get(key):
                    into[key] = section[key]
    for section in merged["families"].values():
        section["summary"] = summarize(section, merged["budgets_gb"])
    merged["command"] = " ; ".join(dict.fromkeys(r["command"] for r in records))
    merged["commit"] = records[-1]["commit"]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="one or more results (e.g. one per device call); "
                        "their families are shown together")
    parser.add_argument("--markdown", help="write the tables here ('-' for stdout)")
    parser.add_argument("--png", type=Path, help="write the chart here (needs matplotlib)")
    args = parser.parse_args()
    record = merge([json.loads(path.read_text()) for path in args.results])
    if args.markdown:
        text = markdown(record)
        if args.markdown == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(args.markdown).write_text(text + "\n")
    if args.png:
        chart(record, args.png)


if __name__ == "__main__":
    main()
