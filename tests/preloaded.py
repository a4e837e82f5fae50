"""`lowvram` commands in real processes that skip the imports a fresh interpreter spends seconds on.

Each command runs in a child forked from one server process that imported lowvram's training code and the
libraries under it, and nothing else: it never ran a tensor operation, so no thread pool is forked half-alive
(multiprocessing's forkserver). The child is a process of its own like `python -m lowvram ...`: its own memory,
files, exit code and signals, so a SIGKILL, a file-size limit or a full disk hits it as it hits a user's run.
The fault tests start dozens of runs; from a fresh interpreter each, the imports were most of their minutes.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# what a tiny training run imports; the server imports them once (what is missing is imported by each child)
PRELOAD = ["lowvram.cli", "lowvram.train.loop", "lowvram.models.loading", "lowvram.adapters.networks", "peft",
           "diffusers.models.unets.unet_2d_condition", "diffusers.models.autoencoders.autoencoder_kl",
           "diffusers.schedulers", "transformers.models.clip.modeling_clip", "safetensors.torch"]
_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _lowvram_main(args: list[str], env: dict, stdout: str, stderr: str, limit_bytes: int | None) -> None:
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    if limit_bytes:  # a write past it fails with EFBIG, as a full disk fails with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores Ctrl-C; a run takes it
    from lowvram.cli import main

    sys.argv = ["lowvram", *args]
    sys.exit(main(args))


class Run:
    """A started `python -m lowvram ARGS` (`argv` as subprocess takes it), with Popen's poll, signals and
    communicate; its output goes to a temporary folder of its own, removed once read."""

    def __init__(self, argv: list[str], env: dict, limit_bytes: int | None = None):
        assert argv[1:3] == ["-m", "lowvram"], argv
        self._logs = Path(tempfile.mkdtemp(prefix="lowvram-run-"))
        self._stdout, self._stderr = self._logs / "stdout", self._logs / "stderr"
        self._process = _forkserver().Process(
            target=_lowvram_main, args=(argv[3:], env, str(self._stdout), str(self._stderr), limit_bytes))
        self._process.start()
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float = 600) -> tuple[str, str]:
        self._process.join(timeout)
        if self.poll() is None:
            self._process.kill()
            self._process.join()
            raise subprocess.TimeoutExpired(["lowvram"], timeout)
        printed = self._stdout.read_text(), self._stderr.read_text()
        shutil.rmtree(self._logs)
        return printed

    def completed(self, timeout: float = 600) -> subprocess.CompletedProcess:
        stdout, stderr = self.communicate(timeout)
        return subprocess.CompletedProcess(["lowvram"], self.returncode, stdout, stderr)


def run(argv: list[str], env: dict, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True) for `python -m lowvram ...`, forked from the server."""
    return Run(argv, env, limit_bytes).completed()
