"""The test suite's time, as the README quotes it, from the log of a fresh-clone `.ci/run` timed by the shell:

    git clone -q . /tmp/ci && cd /tmp/ci && (time .ci/run) > /tmp/ci.log 2>&1
    python tools/record_ci_time.py /tmp/ci.log --clone /tmp/ci --out benchmarks/ci-time.json

It records pytest's summary line (counts and the tests' own time) and the shell's real time (the install
included), with the commit the clone ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

import bench_memory  # tools/, the script's folder

SUMMARY = re.compile(r"=+ (?P<counts>\d+ passed[^=]*?) in (?P<seconds>[\d.]+)s[^=]*=+")
REAL = re.compile(r"^real\s+(?P<minutes>\d+)m(?P<seconds>[\d.]+)s", re.MULTILINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--clone", type=Path, required=True, help="the clone .ci/run ran in (for its commit)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    text = args.log.read_text(errors="replace")
    summary, real = SUMMARY.findall(text), REAL.search(text)
    if not summary or not real:
        raise SystemExit(f"{args.log}: no pytest summary line or no `real` time; run .ci/run under `time`")
    counts, seconds = summary[-1]
    result = {"what": "fresh-clone .ci/run: the README's install and test command",
              "command": " ".join(["python", *sys.argv]),
              "commit": bench_memory.commit(args.clone, from_environment=False),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "result": counts.strip(), "tests_seconds": float(seconds),
              "total_seconds": round(int(real["minutes"]) * 60 + float(real["seconds"]), 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
