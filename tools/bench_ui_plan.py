"""How long `lowvram ui` takes to redraw the plan after an option changes, as a user sees it: `lowvram ui` served
in its own process, headless Chromium (Debian's) typing a new resolution, batch size or rank and leaving the field,
the clock stopped when the plan on the page has changed. Also the planner call alone, in process.

    python tools/bench_ui_plan.py --out benchmarks/ui-plan-latency.json
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_memory import commit, write_result

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLAN_TEXT = ("() => (document.querySelector('#plan-view')?.innerText ?? '') + "
             "(document.querySelector('#plan-error')?.innerText ?? '')")
CHANGES = [("resolution", v) for v in ("768", "640", "896", "512")] + \
          [("batch-size", v) for v in ("2", "4", "1")] + [("rank", v) for v in ("32", "8", "16")]


def serve(work: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(work / "cache"), "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, "-m", "lowvram", "ui", "--port", str(port)], cwd=work, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("lowvram ui did not come up")


def in_browser(url: str, rounds: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    seconds = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#plan-view", timeout=60_000)
        page.locator("#budget textarea, #budget input").first.fill("6GB")
        page.wait_for_function("() => document.querySelector('#plan-pick')?.innerText.includes('6 GiB')")
        for _ in range(rounds):
            for name, value in CHANGES:
                box = page.locator(f"#opt-{name} input, #opt-{name} textarea").first
                before = page.evaluate(PLAN_TEXT)
                start = time.perf_counter()
                box.fill(value)
                box.press("Tab")
                page.wait_for_function(f"b => ({PLAN_TEXT})() != b", arg=before, timeout=30_000)
                seconds.append(time.perf_counter() - start)
        browser.close()
    return seconds


def in_process(rounds: int) -> list[float]:
    from lowvram.ui.planview import BUDGET, plan_for

    seconds = []
    for _ in range(rounds):
        for name, value in CHANGES:
            start = time.perf_counter()
            plan_for({name.replace("-", "_"): value}, BUDGET, "6GB")
            seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"n": len(seconds), "median_s": round(statistics.median(ordered), 3),
            "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 3), "max_s": round(ordered[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = serve(Path(tmp))
        try:
            browser = in_browser(url, args.rounds)
        finally:
            process.terminate()
            process.wait(timeout=30)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "what": "seconds from typing a new option value (and leaving the field) to the plan redrawn on the page; "
                "sd15 on a 6 GB budget; changes: " + ", ".join(f"--{n} {v}" for n, v in CHANGES),
        "browser_round_trip": summary(browser),
        "planner_call": summary(in_process(args.rounds)),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
