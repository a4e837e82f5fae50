"""The dataset as a run sees it, without torch or weights: its buckets, the scan options, the scan index kept in the
cache, and `lowvram check-data`. Training's caching phase (`lowvram.data.prepare`) builds on the same scan."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.console import Console

from lowvram.config import RunConfig, parse_colour
from lowvram.data.buckets import Buckets, default_buckets
from lowvram.data.scan import NoUsableImages, ScanOptions, ScanReport, scan_dataset
from lowvram.resolve import ResolvedRun


def make_buckets(run: ResolvedRun) -> Buckets:
    config, resolution = run.config, run.resolution
    step = config.data.bucket_step or run.family.bucket_step
    if not config.data.bucket:
        return Buckets(resolution, resolution, resolution, min(step, resolution))
    return default_buckets(resolution, step, config.data.min_bucket_side, config.data.max_bucket_side,
                           config.data.bucket_no_upscale)


def scan_options(config: RunConfig, trigger: str | None) -> ScanOptions:
    return ScanOptions(caption_extension=config.data.caption_extension, caption_template=config.data.caption_template,
                       trigger_word=trigger, background=parse_colour(config.data.background),
                       alpha_mask=config.data.alpha_mask, small_images=config.data.small_images)


def scan_index_path(cache_dir: Path, root: Path) -> Path:
    """The scan index lives in the cache, never in the user's dataset folder."""
    return cache_dir / "scan" / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]}.json"


def scan(run: ResolvedRun, root: Path, trigger: str | None, console: Console | None) -> ScanReport:
    return scan_dataset(root, make_buckets(run), scan_options(run.config, trigger),
                        index_path=scan_index_path(run.cache_dir, root), console=console)


def check_data(run: ResolvedRun, report_path: Path | None, verbose: bool, console: Console | None = None
               ) -> ScanReport:
    """`lowvram check-data`: scan, print the summary (also when nothing is usable), optionally write JSON."""
    console = console or Console()
    try:
        report = scan(run, Path(run.config.data.data), run.config.data.trigger_word, console)
    except NoUsableImages as exc:
        exc.report.print_summary(console, verbose)
        if report_path:
            exc.report.write_json(report_path)
        raise
    report.print_summary(console, verbose)
    if report_path:
        report.write_json(report_path)
        console.print(f"report written to {report_path}")
    return report
