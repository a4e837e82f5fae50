"""Training and rendering from the UI, each in its own process: a crash or an out-of-memory error ends that
process, never the UI. Stop sends the process what Ctrl-C sends (it saves a checkpoint and a LoRA, then exits);
Resume starts `train --resume auto` on the same config. Progress is read back from the files a run writes anyway:
`metrics.jsonl`, the samples and the LoRAs."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowvram.errors import Busy, LowvramError, Refused
from lowvram.files import make_folders, write_text
from lowvram.run_files import CHECKPOINTS, METRICS, SAMPLES

LOG_LINES = 12
ETA_WINDOW = 20  # steps the time per step is averaged over
DOUBLE_CLICK_S = 10  # a second Start (or Stop) this soon after the first is the same click again
# what Ctrl-C sends; Windows delivers only Ctrl-Break to another process group (the run takes it as SIGBREAK)
STOP_SIGNAL = getattr(signal, "CTRL_BREAK_EVENT", signal.SIGINT)
# a child's output goes to a file or a pipe, which Windows' Python writes in the ANSI code page: a path or a prompt
# in another script ended the run (rich re-raises UnicodeEncodeError), and the log is read back as UTF-8
CHILD_ENV = {"PYTHONUTF8": "1", "PYTHONIOENCODING": "utf-8"}
# the CLI's advice in the page's words: its buttons and boxes, where a line names the flags or keys they give
PAGE_WORDS = {"with --resume auto": "with the Train tab's Resume", "start over with --overwrite": "start over with "
              "--overwrite ticked (then Start)", "press Ctrl-C again": "press Stop again",
              # (a number box holding letters sends nothing: a field typed in was said to be '')
              "'' is invalid: expected a": "empty, or not a number (letters typed?): expected a",
              # (a run an earlier UI left going: this page's Stop reaches it)
              "wait for it to end, or choose another --output": "wait for it to end (Stop stops one an earlier UI "
              "left going), or choose another --output"}
# a path as shell_line writes it: quoted where it must be (Windows' list2cmdline: in double quotes alone)
QUOTED_WORD = r"((?:\"[^\"]*\"|[^\s\"])+)" if os.name == "nt" else r"((?:'[^']*'|\"[^\"]*\"|[^\s'\"])+)"
CONTINUE_LINE = re.compile(rf"lowvram train --config {QUOTED_WORD} --resume auto")
OPTIONS_GIVEN = re.compile(rf"--config {QUOTED_WORD} gives them")


def in_page_words(text: str) -> str:
    """A line of the CLI's (an error, the run's log) as the page says it."""
    def path(match: re.Match) -> str:  # as the config file box takes it: unquoted
        word = match.group(1)
        if os.name == "nt":  # (list2cmdline's quotes; a \ is a folder's)
            return word.replace('"', "")
        try:
            return shlex.split(word)[0]
        except ValueError:  # (not shell_line's: as it is)
            return word

    text = CONTINUE_LINE.sub(lambda m: f"the Train tab's Resume (first Load .toml {path(m)}, where the form holds "
                             "other options)", text)
    text = OPTIONS_GIVEN.sub(lambda m: f"Load .toml {path(m)} gives them", text)
    for flags, page in PAGE_WORDS.items():
        text = text.replace(flags, page)
    return text


def lowvram_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lowvram", *args]


@dataclass
class TrainingProcess:
    """The UI's one training run (a local app for one person: one run at a time). `name` names its config and log:
    the UI's port's, so that two UIs (two ports) never write into each other's."""

    name: str = "ui-run"
    config_path: Path | None = None
    output: Path | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    stopping: bool = False  # Stop was pressed and the run has not exited yet
    started: float = 0.0  # time.time() as the run started
    toml: str = ""  # the config it started with: a second Start of another is no double click
    checkpoints_before: frozenset = frozenset()  # the whole checkpoints its folder held then (a stop's is new)
    stopped_at: float = 0.0  # time.time() as Stop was pressed
    at_once: bool = False  # Stop pressed again: the run ends without saving
    others_stopped: dict[int, float] = field(default_factory=dict)  # pid -> time.time() of Stop, for others' runs
    # one Start (or Resume) at a time: two pages' clicks together both passed the check, and wrote one config
    starting: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, toml: str, config_dir: Path, output: Path, resume: str | None = None,
              auto_vram: str | None = None, overwrite: bool = False) -> str:
        """`lowvram train --config` of `toml` in a process of its own; `resume` (auto or a checkpoint folder) and
        `overwrite` are the run's circumstances, never written into a config."""
        with self.starting:
            return self._start(toml, config_dir, output, resume, auto_vram, overwrite)

    def _start(self, toml: str, config_dir: Path, output: Path, resume: str | None, auto_vram: str | None,
               overwrite: bool) -> str:
        if self.running:
            if self.stopping:  # (Stop, a field corrected, Start: it was taken for the first click, and never started)
                raise LowvramError("the last run is still stopping (it saves a checkpoint, then exits); press Start "
                                   "again once its state says it stopped")
            # a double click: the first click's "started" was replaced by an error (not a Start of other settings)
            if time.time() - self.started < DOUBLE_CLICK_S and toml == self.toml:
                return f"started {time.time() - self.started:.0f} s ago: the run is going (one click starts it)"
            raise LowvramError("a run is already going: stop it first")
        make_folders(config_dir)
        config_path = write_text(config_dir / f"{self.name}.toml", toml)
        problem = output_problem(config_path, resume, overwrite)
        if problem:  # a run refused at its start never becomes the run the Train tab shows
            raise LowvramError(problem)
        self.config_path, self.output, self.stopping, self.started = config_path, output, False, time.time()
        self.at_once = False
        self.toml = toml
        self.checkpoints_before = frozenset(self._checkpoints())
        args = ["train", "--config", str(self.config_path)]
        if resume:
            args += ["--resume", resume]
        if overwrite:
            args += ["--overwrite"]
        if auto_vram is not None:
            args += ["--auto", *(["--vram", auto_vram] if auto_vram else [])]
        self.log_path = config_dir / f"{self.name}.log"  # (its name the user's: a lab's users share one cache)
        kept = config_dir / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        try:  # the earlier run's log kept under its time (a run an earlier UI left going writes on into it), not cut
            if self.log_path.exists():  # short or lost
                os.replace(self.log_path, kept)
        except OSError:  # (Windows: a file another process has open) this run's under a name of its own
            self.log_path = kept
        with open(self.log_path, "w", encoding="utf-8") as log:
            # a session (process group) of its own: Ctrl-C in the terminal running the UI does not reach the run
            own_group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
                         else {"start_new_session": True})
            self.process = subprocess.Popen(lowvram_command(*args), stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **CHILD_ENV, "COLUMNS": "100"}, **own_group)
        return f"started: lowvram {' '.join(args)}"

    def left_going(self) -> str | None:
        """The line the UI ends with while its run goes on (the run is a process of its own; a UI started anew does
        not show it)."""
        if not self.running:
            return None
        how = (f"`kill -INT {self.process.pid}` stops it as Stop does, saving a checkpoint" if os.name != "nt" else
               "ending it in the Task Manager saves no checkpoint: --resume auto goes on from the last one")
        return (f"lowvram ui: its run goes on (pid {self.process.pid}, --output {self.output}, its log {self.log_path}, "
                f"kept with the time it moved as another run starts); {how}")

    def _checkpoints(self) -> set[str]:
        from lowvram.train import checkpoint_folders

        if self.output is None:
            return set()
        return {path.name for _, path in checkpoint_folders.complete(self.output / CHECKPOINTS)}

    def stop(self) -> str:
        """What Ctrl-C does: the run finishes its step, saves a checkpoint and a LoRA, and exits."""
        if not self.running:
            return "no run is going"
        if self.stopping and time.time() - self.stopped_at < DOUBLE_CLICK_S:
            # (a slow step makes the first click look unheard: a second signal ended the run, its steps unsaved)
            return (f"Stop was pressed {time.time() - self.stopped_at:.0f} s ago: the run saves a checkpoint and its "
                    "LoRA as its step ends, then exits (pressing Stop again later ends it at once, unsaved)")
        if self.stopping:
            self.process.send_signal(STOP_SIGNAL)
            self.at_once = True
            return "Stop pressed again: the run ends at once, without saving the steps since its last checkpoint"
        self.process.send_signal(STOP_SIGNAL)
        self.stopping, self.stopped_at = True, time.time()
        # the click's own line, true once the run has stopped too (the state's "stopping" stayed under "stopped")
        return ("Stop pressed: the run finishes its step, saves a checkpoint and its LoRA, then exits (Stop pressed "
                f"again after {DOUBLE_CLICK_S} s ends it at once, unsaved)")

    def state(self) -> str:
        if self.process is None:
            return "no run yet"
        code = self.process.poll()
        if code is None:
            return "stopping: the run saves a checkpoint, then exits" if self.stopping else "running"
        if code == 130:  # (stopped while it cached or loaded, it saved nothing)
            checkpoints = self._checkpoints()  # (by name, not by time: a network disk's clock is the server's)
            saved, earlier = bool(checkpoints - self.checkpoints_before), bool(checkpoints)
            # (an at-once end after a periodic checkpoint read as a saved stop, its later steps lost unsaid)
            return ("stopped (a checkpoint was saved: Resume continues it)" if saved and not self.at_once else
                    ("ended at once by a second Stop, its steps since the last checkpoint not kept (" if self.at_once
                     else "stopped before its first step, saving nothing (")
                    + ("Resume continues from the last checkpoint)" if earlier else "Start begins it again)"))
        if code == Busy.exit_code:  # (two runs raced for the folder: nothing of it was changed)
            return "refused: another run holds its output folder (see the log); Start it once that run ends"
        return "finished" if code == 0 else f"failed (exit code {code}): see the log"

    def run_folder(self) -> Path | None:
        """The output folder once this run holds it: until then its files are an earlier run's (a run refused there,
        or one that has not yet moved them to archive/, never shows them as its own)."""
        from lowvram.train.outdir import RECORD

        try:
            claimed = self.output is not None and (self.output / RECORD).stat().st_mtime >= self.started
        except OSError:
            return None
        return self.output if claimed else None

    def log_tail(self) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(in_page_words(line) for line in lines[-LOG_LINES:])


def stop_left_run(output: Path, ui_dir: Path, pressed: dict[int, float]) -> str:
    """Stop, as Ctrl-C does, the run another UI of this machine (its configs in `ui_dir`) started in `output`, one
    an earlier UI left going as it closed: a UI started anew showed nothing of it, and its Stop said no run was
    going. `pressed`: when Stop was pressed for each such run's pid, so that a second click within seconds is the
    first again (a second Ctrl-C ends a run at once, unsaved)."""
    import psutil

    from lowvram.train.folder_lock import FolderLock

    pid = FolderLock(output).held_here()
    if pid is None:
        return "no run is going"
    try:
        started_by_a_ui = any(Path(word).parent == ui_dir for word in psutil.Process(pid).cmdline())
    except (psutil.Error, OSError, ValueError):
        started_by_a_ui = False
    if not started_by_a_ui or os.name == "nt":  # (Windows: Ctrl-Break reaches no process group but its own console's)
        return (f"no run of this page is going; {output} is in use by another lowvram run (pid {pid}), not one a UI "
                "started here: stop it where it runs (Ctrl-C in its terminal)" if not started_by_a_ui else
                f"the run another UI started in {output} goes on (pid {pid}); end it in the Task Manager (it saves "
                "no checkpoint: Resume continues from its last one)")
    since = time.time() - pressed.get(pid, -math.inf)
    if since < DOUBLE_CLICK_S:
        return (f"Stop was pressed {since:.0f} s ago for the run in {output} (pid {pid}): it saves a checkpoint and "
                "its LoRA as its step ends, then exits")
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:  # (it ended meanwhile)
        return "no run is going"
    except PermissionError:  # (another account's, on a shared machine)
        return f"{output} is in use by another account's lowvram run (pid {pid}); its owner stops it"
    if pid in pressed:
        return f"Stop pressed again: the run in {output} (pid {pid}) ends at once, without saving its last steps"
    pressed[pid] = time.time()
    return (f"Stop pressed for the run another UI started in {output} (pid {pid}), which this page does not show: "
            "it finishes its step, saves a checkpoint and its LoRA, then exits (Resume then continues it)")


def with_recorded_strategy(values: dict[str, Any], output: Path) -> dict[str, Any]:
    """For a resume: the memory strategy the run trained with (its `<name>.toml` in its folder holds --auto's
    pick), beneath the form's own choices. The form's config leaves the strategy to --auto, and a resume at the
    default optimizer was refused as another run."""
    from lowvram.configure import read_config
    from lowvram.plan import STRATEGY_OPTIONS
    from lowvram.run_files import options_path

    name = values.get("name") or output.name
    try:
        recorded = read_config(options_path(output, name))
    except (LowvramError, OSError):  # (none yet, or unreadable: the run's own check says what is wrong)
        return values
    return {**{key: recorded[key] for key in STRATEGY_OPTIONS if key in recorded}, **values}


def output_problem(config_path: Path, resume: str | None, overwrite: bool = False) -> str | None:
    """The line `lowvram train --config config_path` would stop at over its --output folder (None: it would take
    it), found without writing there; an option's error is left to the run, which says it in its log."""
    from lowvram.configure import build_config, read_config
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run
    from lowvram.train.folder_lock import FolderLock
    from lowvram.train.outdir import ownership_problem, processes_problem

    try:
        config = build_config(read_config(config_path) | ({"resume": resume} if resume else {})
                              | ({"overwrite": True} if overwrite else {}))
        run = resolve_run(config, NO_GPU)
        processes_problem(run, 1)  # (the UI's runs are one process: a checkpoint of accelerate launch's is refused)
        # a run going there first (a UI restarted beside its run called its files an earlier run's, then its Resume
        # started a run that failed on the folder's lock)
        return FolderLock(config.output_dir).held_by_another() or ownership_problem(run)
    except Refused as exc:  # (a checkpoint of another lowvram or process count)
        return str(exc)
    except LowvramError:  # (an option's own error: the run's to say)
        return None


def read_metrics(output: Path | None) -> list[dict]:
    """The step records of a run's metrics.jsonl (a line being written is left for the next read)."""
    path = Path(output or "") / METRICS
    if not output or not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            records.append(record)
    return records


def earlier_run(output: str | None) -> str:
    """A line on the run a loaded config's output folder holds already (its last step and loss, its newest
    checkpoint), for Resume to be chosen knowing it; "" where there is none (an earlier version's run showed
    nothing until it was resumed)."""
    from lowvram.train import checkpoint_folders

    folder = Path(output or "")
    if not output or not folder.is_dir():
        return ""
    found, records = checkpoint_folders.complete(checkpoint_folders.checkpoint_root(folder)), read_metrics(folder)
    if not (found or records):
        return ""
    saved = (f"checkpoints up to step {found[-1][0]}: Resume continues it (where it is this config's run)" if found else
             "no checkpoint to resume from")
    return f"{folder} holds a run: {progress_line(records, running=False) or 'no step logged'}; {saved}"


# the run's own step line's (a caching line's time left, or a day's "1 day, 2:03:04", is no run's)
LOG_TIME_LEFT = re.compile(r"^step \d+/\d+ .*\b(\d+:\d\d:\d\d) left$", re.MULTILINE)


def progress_line(records: list[dict], running: bool = True, log: str = "") -> str:
    """Step, loss, VRAM and, while the run goes, the time left: the run's log's (timed by the clock, sample grids
    and saves included), else from the metrics' step times."""
    if not records:
        return "waiting for the first step" if running else ""
    last = records[-1]
    total_steps = last.get("total_steps")
    loss = f"{last['loss']:.4f}" if isinstance(last.get("loss"), (int, float)) else "nan"  # (null: a NaN step's)
    if loss != "nan" and isinstance(last.get("loss_smoothed"), (int, float)):  # the log's (a NaN step's said so)
        loss = f"{last['loss_smoothed']:.4f} (smoothed)"
    words = [f"step {last['step']}" + (f" of {total_steps}" if total_steps else ""), f"loss {loss}"]
    if "vram_peak_gib" in last:
        words.append(f"VRAM peak {last['vram_peak_gib']:.2f} GiB")
    recent = [r["seconds"] for r in records[-ETA_WINDOW:] if "seconds" in r]
    if running and (logged := LOG_TIME_LEFT.findall(log)):  # (the step times alone said a third of it, beside it)
        words.append(f"about {logged[-1]} left")
    elif total_steps and recent and running:
        left = (total_steps - last["step"]) * sum(recent) / len(recent)
        words.append(f"about {left:.0f} s left")
    return ", ".join(words)


def outputs_of(output: Path | None) -> tuple[list[str], list[str]]:
    """(sample images, LoRA files) of a run folder, newest first."""
    if not output or not Path(output).is_dir():
        return [], []
    folder = Path(output)

    def newest(paths):
        return [str(p) for p in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)]

    samples = newest((folder / SAMPLES).glob("*.png")) if (folder / SAMPLES).is_dir() else []
    return samples, newest(folder.glob("*.safetensors"))


def render(model: str, lora: str, prompt: str, image: Path, steps: int = 20) -> Path:
    """A test image of the LoRA, through `lowvram generate` in a process of its own."""
    # flag=value: a prompt or a path that starts with -- is still the flag's value
    done = subprocess.run(lowvram_command("generate", f"--model={model}", f"--lora={lora}", f"--prompt={prompt}",
                                          f"--output={image}", f"--steps={steps}", "--overwrite"),
                          capture_output=True, text=True, encoding="utf-8", errors="replace", check=False,
                          env={**os.environ, **CHILD_ENV})
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise LowvramError(message.removeprefix("lowvram generate: error: "))
    return image
