"""`lowvram ui` served in a process of its own, as a user starts it, for the tests that talk to it."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_ui(cwd: Path, cache: Path, log: Path, *flags: str):
    """The app's URL once it answers, started in `cwd` with its own cache; its output goes to `log`."""
    port = free_port()
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "lowvram", "ui", "--port", str(port), *flags], cwd=cwd,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:  # up: it answers, and has said so (its line comes once Gradio's launch returns, after the
                try:     # server answers: a test quicker than that stopped it before the line)
                    urllib.request.urlopen(url, timeout=2).close()
                    if "Ctrl-C stops it" in log.read_text():
                        break
                except OSError:
                    pass
                if process.poll() is not None or time.time() > deadline:
                    raise AssertionError("lowvram ui did not come up:\n" + log.read_text()[-3000:])
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()  # SIGTERM, as a service manager stops it: said, and 130 (it ended with 0)
            stopped = process.wait(timeout=30)
    assert stopped == 130 and "lowvram ui: interrupted" in log.read_text(), (stopped, log.read_text()[-2000:])
