"""Render GPU results (tools/bench_gpu_proof.py, and the first readings' older layout) as Markdown tables and a
PNG chart for the README.

    python tools/render_benchmarks.py benchmarks/gpu/2026-11-29-h200/run*.json --markdown -
    python tools/render_benchmarks.py benchmarks/gpu/DATE-DEVICE/gpu-proof.json --markdown - --png docs/proof.png

Every figure comes from the JSON files named; each table says which file, command and commit it comes from. The
plan column is what `lowvram plan` says of the same run today (tools/calibrate_planner.planned), so a table
rendered after a calibration shows the planner as it now stands.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


from calibrate_planner import planned

GIB = 1024**3
USUAL_WAY = "usual way (diffusers example defaults)"


def _gib(value) -> str:
    return f"{value / GIB:.2f}" if value else "-"


def rows_of(section: dict) -> tuple[list[dict], list[dict]]:
    """(baselines, strategy runs) of one family, each with its batch (older results: one baseline, batch 1)."""
    baselines = section.get("baseline") or []
    if isinstance(baselines, dict):
        baselines = [baselines] if baselines else []
    batch = section.get("batch", 1)
    return ([{"batch": batch, **b} for b in baselines],
            [{"batch": batch, **r} for r in section.get("strategies", [])])


def strategy_table(sources: list[tuple[str, dict]]) -> list[str]:
    lines = ["| model | batch | strategy | peak VRAM GiB | plan GiB | plan error | s/step | vs usual way | source |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for source, record in sources:
        for family, section in record["families"].items():
            baselines, runs = rows_of(section)
            for run in sorted(baselines + runs, key=lambda r: (r["batch"], r["strategy"] != baselines[0]["strategy"]
                                                                if baselines else 0,
                                                                r.get("peak_reserved_plus_context") or 1e30)):
                base = next((b for b in baselines if b["batch"] == run["batch"] and b.get("ok")), None)
                label = f"{family} {section['resolution']}"
                if not run.get("ok"):
                    lines.append(f"| {label} | {run['batch']} | {run['strategy']} | crashed: "
                                 f"`{run.get('error', '?')[:70]}` | | | | | {source} |")
                    continue
                measured = run.get("peak_reserved_plus_context")
                plan = planned({**run, "family": family}) if "unet_weights" in run and measured else None
                error = f"{(plan - measured) / measured:+.1%}" if plan else "-"
                speed = f"{base['seconds_per_step'] / run['seconds_per_step']:.2f}x" if base else "-"
                name = USUAL_WAY if run["strategy"].startswith("baseline") else run["strategy"]
                lines.append(f"| {label} | {run['batch']} | {name} | {_gib(measured)} | {_gib(plan)} | {error} | "
                             f"{run['seconds_per_step']:.3f} | {speed} | {source} |")
    return lines


def budget_table(sources: list[tuple[str, dict]]) -> list[str]:
    lines = [("| model | batch | budget | planner's pick | pick vs fastest unconstrained | fastest that fits vs usual "
             "way | source |"), "|---|---:|---:|---|---:|---:|---|"]
    for source, record in sources:
        for family, section in record["families"].items():
            for row in section.get("summary", []) if isinstance(section.get("summary"), list) else []:
                budget = f"{row['budget_gb']:g} GiB" if row["budget_gb"] else "unlimited"
                ratio = row.get("pick_vs_fastest_unconstrained")
                speedup = row.get("fastest_fitting_speedup_vs_usual_way")
                lines.append(f"| {family} | {row['batch']} | {budget} | {row['planner_pick'] or 'nothing fits'} | "
                             f"{f'{ratio:.2f}x' if ratio else '-'} | {f'{speedup:.2f}x' if speedup else '-'} | "
                             f"{source} |")
    return lines if len(lines) > 2 else []


def auto_table(sources: list[tuple[str, dict]]) -> list[str]:
    lines = [("| model | cap | precision | `--auto` chose | ok | OOM events | largest phase + context GiB | within cap "
             "| source |"), "|---|---:|---|---|---|---:|---:|---|---|"]
    for source, record in sources:
        for family, section in record["families"].items():
            for run in section.get("auto", []):
                peaks = run.get("phase_peaks") or {}
                largest = max(peaks.values(), default=0) + run.get("context_bytes", 0) if peaks else None
                choice = (f"{run['unet_weights']}{', ckpt' if run.get('gradient_checkpointing') else ''}, "
                          f"{run['optimizer']}" if run.get("unet_weights") else "-")
                lines.append(f"| {family} | {run['budget_gb']:g} GB | {run.get('mixed_precision', 'bf16')} | {choice} | "
                             f"{'yes' if run.get('ok') else 'no: ' + run.get('error', '')[:60]} | "
                             f"{run.get('out_of_memory_events', '-')} | {_gib(largest)} | {run.get('within_cap', '-')} "
                             f"| {source} |")
    return lines if len(lines) > 2 else []


def short_commit(commit: str) -> str:
    """A hash's first ten digits; anything else (no commit known) whole."""
    return commit[:10] if re.fullmatch(r"[0-9a-f]{40}", commit) else commit


def markdown(sources: list[tuple[str, dict]]) -> str:
    lines = []
    for source, record in sources:
        env = record["environment"]
        lines.append(f"- `{source}`: {env.get('device')}, driver {env.get('driver')}, torch {env.get('torch')}, CUDA "
                     f"{env.get('cuda')}, bitsandbytes {env.get('bitsandbytes')}, optimum-quanto "
                     f"{env.get('optimum.quanto')}; commit `{short_commit(record['commit'])}`; `{record['command']}`")
    lines += ["", ("Peak VRAM is PyTorch's peak reserved plus the CUDA context; plan is `lowvram plan`'s estimate of "
              "the same phase today."), ""]
    for table in (strategy_table(sources), budget_table(sources), auto_table(sources)):
        if table:
            lines += [*table, ""]
    return "\n".join(lines)


def chart(sources: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(f"{family} b{r['batch']} {r['strategy'][:28]}", r) for _, record in sources
            for family, section in record["families"].items() for part in rows_of(section) for r in part
            if r.get("ok")]
    figure, (memory_axis, speed_axis) = plt.subplots(1, 2, figsize=(13, 0.3 * len(runs) + 1.5))
    labels = [label for label, _ in runs]
    memory_axis.barh(labels, [(r.get("peak_reserved_plus_context") or 0) / GIB for _, r in runs], color="#3b7dd8")
    memory_axis.set_title("peak VRAM (GiB, reserved + context)")
    speed_axis.barh(labels, [r["seconds_per_step"] for _, r in runs], color="#3b7dd8")
    speed_axis.set_title("seconds per step (lower is faster)")
    speed_axis.set_yticklabels([])
    for axis in (memory_axis, speed_axis):
        axis.invert_yaxis()
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--markdown", help="write the tables here ('-' for stdout)")
    parser.add_argument("--png", type=Path, help="write the chart here (needs matplotlib)")
    args = parser.parse_args()
    sources = [(path.as_posix(), json.loads(path.read_text())) for path in args.results]
    if args.markdown:
        text = markdown(sources)
        if args.markdown == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(args.markdown).write_text(text + "\n")
    if args.png:
        chart(sources, args.png)


if __name__ == "__main__":
    main()
