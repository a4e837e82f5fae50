"""The UI without a browser: its form is the config schema (every option has a field, the form's values are the
options a user set, as flags would be, and the `.toml` it saves is what `train --config` reads back), and
`lowvram ui` refuses a port it cannot serve in one line."""


import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from lowvram.cli import main
from lowvram.config import fields_by_name
from lowvram.configure import build_config, read_toml
from lowvram.errors import LowvramError
from lowvram.ui.form import form_fields, form_values, option_values, toml_text


def test_every_option_has_one_field_and_its_default_round_trips():
    fields = form_fields()
    assert [f.name for f in fields] == list(fields_by_name())
    assert option_values(fields, form_values(fields, {})) == {}  # an untouched form sets nothing


def test_the_form_sets_only_what_differs_from_the_defaults():
    fields = form_fields()
    shown = form_values(fields, {"rank": 32, "flip": True, "sample_prompts": ("a cat", "a dog"), "lr": 2e-4})
    by_name = dict(zip([f.name for f in fields], shown, strict=True))
    by_name["max_steps"] = "500"  # an optional number is a text box
    by_name["trigger_word"] = "  "  # left blank
    values = option_values(fields, [by_name[f.name] for f in fields])
    # optional numbers stay text: the config reads them as it reads flags
    assert values == {"rank": 32, "flip": True, "sample_prompts": ("a cat", "a dog"), "lr": "0.0002",
                      "max_steps": "500"}
    config = build_config({"model": "tiny", "data": "sample", **values})
    assert config.training.max_steps == 500 and config.optim.lr == 2e-4


def test_the_saved_toml_replays_with_local_folders_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    text = toml_text({"model": "tiny", "data": "data", "output": "out", "rank": 8})
    (tmp_path / "elsewhere").mkdir()
    saved = tmp_path / "elsewhere" / "run.toml"
    saved.write_text(text)
    values = read_toml(saved)
    assert values["data"] == str(tmp_path / "data") and values["output"] == str(tmp_path / "out")
    assert values["model"] == "tiny"  # a family name, not a path
    assert values["rank"] == 8
    assert build_config(values).network.rank == 8


def test_an_option_that_cannot_run_is_refused_in_the_clis_words():
    from lowvram.errors import LowvramError

    with pytest.raises(LowvramError, match="--rank: must be > 0"):
        toml_text({"model": "tiny", "data": "sample", "rank": 0})


def test_a_port_in_use_is_one_line(capsys):
    pytest.importorskip("gradio")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after a warning of other users here, if any)
    free = re.fullmatch(rf"lowvram ui: error: --port {port}: .*; choose another with --port \((\d+) is free\)", err)
    assert free and int(free.group(1)) > port, err
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(free.group(1))))


def test_a_kohya_config_fills_the_form_and_saves_as_lowvrams_own(tmp_path):
    """The UI's "load .toml" takes a kohya_ss config as `--config` does; *Save .toml* then writes lowvram's."""
    import tomli_w

    kohya = tmp_path / "config_lora.toml"
    kohya.write_text(tomli_w.dumps({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
                                    "network_dim": 8, "network_alpha": 4, "resolution": "64,64",
                                    "network_args": ["conv_dim=2"], "max_train_steps": 5, "noise_offset": 0}))
    fields = form_fields()
    shown = form_values(fields, read_toml(kohya))
    replayed = tmp_path / "run.toml"
    replayed.write_text(toml_text(option_values(fields, shown)))
    config = build_config(read_toml(replayed))
    assert (config.network.rank, config.alpha, config.network.conv_rank_alpha) == (8, 4.0, (2, 1.0))
    assert (config.data.resolution, config.training.max_steps, config.network.lora_layers) == (64, 5, "full")


def test_a_stopped_run_says_stopping_until_it_exits():
    """The state line the UI polls: after Stop it says the run is stopping (not running) for as long as the run
    takes to save and exit, so the click's message and the polled state agree."""
    import subprocess
    import sys

    from lowvram.ui.runs import TrainingProcess

    # a run that takes its time over Ctrl-C (it ignores it), as one finishing its step and saving does
    slow = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        training = TrainingProcess(process=child)
        assert training.state() == "running"
        assert training.stop().startswith("Stop pressed: ")  # (the click's line stays: true after the stop too)
        assert training.state() == "stopping: the run saves a checkpoint, then exits"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert training.state().startswith("failed")


def test_stop_sends_what_ctrl_c_sends_and_an_interrupted_run_reads_as_stopped(tmp_path):
    """Ctrl-C lets a run finish its step and save; a kill would lose both. Exit code 130 is the saved stop."""
    import subprocess
    import sys

    from lowvram.ui.runs import TrainingProcess

    got = tmp_path / "signal"
    script = ("import signal, sys, time, pathlib\n"
              "def stop(number, frame):\n"
              f"    pathlib.Path({str(got)!r}).write_text(signal.Signals(number).name); sys.exit(130)\n"
              "signal.signal(signal.SIGINT, stop); print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        training = TrainingProcess(process=child, output=tmp_path, started=time.time() - 1)
        training.stop()
        assert child.wait(timeout=30) == 130
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert got.read_text() == "SIGINT"
    # stopped while it cached: nothing saved (it said a checkpoint was saved, and Resume found none)
    assert training.state() == "stopped before its first step, saving nothing (Start begins it again)"
    (tmp_path / "checkpoints" / "step-000003").mkdir(parents=True)  # the stop's checkpoint
    (tmp_path / "checkpoints" / "step-000003" / "state.json").write_text("{}")
    assert training.state() == "stopped (a checkpoint was saved: Resume continues it)"


def test_stop_pressed_twice_at_once_is_one_click_and_later_ends_the_run_at_once(tmp_path):
    """On a slow card Stop seems unheard until the step ends: a second click sent a second Ctrl-C, which ends the run
    without saving (its steps lost, and the state said "before its first step"). Within seconds it is the same click;
    later it is the CLI's second Ctrl-C, said as such."""
    import subprocess
    import sys

    from lowvram.ui import runs
    from lowvram.ui.runs import TrainingProcess

    got = tmp_path / "signals"
    script = ("import signal, sys, time, pathlib\n"
              f"p = pathlib.Path({str(got)!r})\n"
              "def stop(number, frame):\n"
              "    p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
              "    if len(p.read_text()) == 2: sys.exit(130)\n"
              "signal.signal(signal.SIGINT, stop); print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        training = TrainingProcess(process=child, output=tmp_path, started=time.time() - 1)
        assert training.stop().endswith(f"(Stop pressed again after {runs.DOUBLE_CLICK_S} s ends it at once, unsaved)")
        assert training.stop().startswith("Stop was pressed 0 s ago: the run saves a checkpoint")
        time.sleep(1.0)
        assert got.read_text() == "x"  # one signal: the run goes on saving
        training.stopped_at -= runs.DOUBLE_CLICK_S  # pressed again a while later: at once, as the log's hint says
        assert training.stop().startswith("Stop pressed again: the run ends at once")
        assert child.wait(timeout=30) == 130
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert training.state() == ("ended at once by a second Stop, its steps since the last checkpoint not kept (Start "
                                "begins it again)")
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)  # a periodic checkpoint, before the stops
    (tmp_path / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    assert training.state().startswith("ended at once by a second Stop")  # (it read as a saved stop)


def test_the_time_left_is_the_runs_own_log_figure_sample_grids_included():
    """The step times alone leave out sample grids and saves: the page said 104 s left beside the log's 0:05:47,
    and the run took five minutes more."""
    from lowvram.ui.runs import progress_line

    records = [{"step": step, "total_steps": 100, "loss": 0.5, "seconds": 2.0} for step in range(1, 57)]
    log = "step 50/100  loss 0.5012  2.10 s/it  0:04:02 elapsed, 0:06:10 left\nstep 56/100  loss 0.5  0:05:47 left\n"
    assert progress_line(records, True, log).endswith("about 0:05:47 left")
    # (a later caching line's time left is no run's: a resume caches what changed, its steps shown already)
    assert progress_line(records, True, log + "caching latents 120/500 (30 s, 4.0/s, 0:01:35 left)\n").endswith(
        "about 0:05:47 left")
    assert progress_line(records, True, "caching latents").endswith("about 88 s left")  # (none logged yet)
    assert "left" not in progress_line(records, False, log)


def test_stop_reaches_the_run_an_earlier_ui_left_going_in_the_forms_folder(tmp_path):
    """A UI closed while its run went on (its terminal said so, then closed): the UI started anew showed nothing of
    the run, its Stop said "no run is going", and only `kill -INT` stopped it. A run not started by a UI (another
    terminal's) is named, not stopped."""
    import subprocess
    import sys

    from lowvram.ui.runs import in_page_words, stop_left_run

    got, ui_dir = tmp_path / "signal", tmp_path / "ui"
    holding = ("import signal, sys, time, pathlib\nfrom lowvram.train.folder_lock import FolderLock\n"
               "FolderLock(pathlib.Path(sys.argv[1])).acquire()\n"
               f"got = pathlib.Path({str(got)!r})\n"
               "def stop(number, frame):\n"  # (each signal noted; the run saves for a while, then exits)
               "    got.write_text((got.read_text() if got.exists() else '') + signal.Signals(number).name)\n"
               "signal.signal(signal.SIGINT, stop); print('ready', flush=True)\n"
               "while not got.exists(): time.sleep(0.05)\n"
               "time.sleep(1.5); sys.exit(130)")
    for config in (tmp_path / "elsewhere.toml", ui_dir / "ui-run-7860.toml"):
        child = subprocess.Popen([sys.executable, "-c", holding, str(tmp_path / "out"), str(config)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            pressed: dict[int, float] = {}
            said = stop_left_run(tmp_path / "out", ui_dir, pressed)
            if config.parent != ui_dir:  # another terminal's run: named, left alone
                assert said.endswith("not one a UI started here: stop it where it runs (Ctrl-C in its terminal)")
                time.sleep(0.5)
                assert child.poll() is None and not got.exists()
                continue
            assert said.startswith(f"Stop pressed for the run another UI started in {tmp_path / 'out'} (pid ")
            # a second click at once is the first again (a second Ctrl-C ends a run unsaved)
            assert stop_left_run(tmp_path / "out", ui_dir, pressed).startswith("Stop was pressed 0 s ago for the run")
            assert child.wait(timeout=30) == 130 and got.read_text() == "SIGINT"
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
    assert stop_left_run(tmp_path / "out", ui_dir, {}) == "no run is going"
    assert in_page_words("in use by another lowvram run (pid 9); wait for it to end, or choose another --output") == (
        "in use by another lowvram run (pid 9); wait for it to end (Stop stops one an earlier UI left going), or "
        "choose another --output")


def test_start_and_resume_pressed_together_in_two_pages_start_one_run(tmp_path, sample_data):
    """Two pages' Start and Resume at once both passed the "a run is going" check: both said started, wrote one
    config (the first run trained the second's), and one log replaced the other's."""
    import threading

    from lowvram.ui.runs import TrainingProcess

    training, said, barrier = TrainingProcess(), [], threading.Barrier(2)

    def press(output: str) -> None:
        toml = toml_text({"model": "tiny", "data": str(sample_data), "output": str(tmp_path / output), "max_steps": 1})
        barrier.wait()
        try:
            said.append(training.start(toml, tmp_path / "ui", tmp_path / output))
        except LowvramError as exc:
            said.append(str(exc))

    pages = [threading.Thread(target=press, args=(output,)) for output in ("a", "b")]
    try:
        for page in pages:
            page.start()
        for page in pages:
            page.join(timeout=120)
        assert sorted(line.split(":")[0] for line in said) == ["a run is already going", "started"], said
    finally:
        if training.process is not None:
            training.process.kill()
            training.process.wait()


def test_a_run_refused_as_its_folder_is_held_reads_as_refused_not_failed(tmp_path):
    """A run the UI started whose folder another run took first (two runs racing, the UI's check at Start passed)
    exits 75, nothing of it changed: said as refused, not failed. (This one is refused at train's first look at
    the lock; the race inside `claimed` is tests/test_output_folder.py's.)"""
    import subprocess
    import sys

    from lowvram.train.folder_lock import FolderLock
    from lowvram.ui.runs import TrainingProcess

    held = FolderLock(tmp_path / "run")  # (this process stands for the run that took the folder first)
    held.acquire()
    try:
        child = subprocess.Popen([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                                  "--output", str(tmp_path / "run")], stderr=subprocess.PIPE, text=True)
        _, err = child.communicate(timeout=120)
    finally:
        held.release()
    assert child.returncode == 75 and "is in use by another lowvram run" in err, err
    assert TrainingProcess(process=child).state() == ("refused: another run holds its output folder (see the log); "
                                                      "Start it once that run ends")


def test_start_passes_resume_and_the_typed_budget_and_refuses_a_second_run(tmp_path, sample_data):
    from conftest import run_config

    from lowvram.train.loop import train
    from lowvram.ui.runs import TrainingProcess

    train(run_config(output=str(tmp_path / "out"), data=str(sample_data), max_steps=2, checkpoint_every=1))
    toml = toml_text({"model": "tiny", "data": str(sample_data), "output": str(tmp_path / "out"), "max_steps": 4,
                      "rank": 4, "alpha": 4})
    training, started = TrainingProcess(), []
    try:
        said = training.start(toml, tmp_path / "ui", tmp_path / "out", resume="auto", auto_vram="6GB")
        started.append(training.process)
        assert training.process.args[-8:] == ["train", "--config", str(tmp_path / "ui" / "ui-run.toml"), "--resume",
                                              "auto", "--auto", "--vram", "6GB"]
        assert said.endswith(" --resume auto --auto --vram 6GB")
        first = training.process  # a double click: the second Start is the first again, said as started
        assert training.start(toml, tmp_path / "ui", tmp_path / "out").startswith("started ")
        assert training.process is first
        with pytest.raises(LowvramError, match="^a run is already going: stop it first$"):  # another config: no
            training.start(toml.replace("max_steps = 4", "max_steps = 5"), tmp_path / "ui", tmp_path / "out")  # click
        training.stopping = True  # Stop pressed, a field corrected, Start: not taken for the first click
        with pytest.raises(LowvramError, match="^the last run is still stopping"):
            training.start(toml, tmp_path / "ui", tmp_path / "out")
        training.stopping = False
        training.started -= 60  # a Start a minute later is a second run: refused while the first goes on
        with pytest.raises(LowvramError, match="^a run is already going: stop it first$"):
            training.start(toml, tmp_path / "ui", tmp_path / "out")
    finally:
        for process in {*started, training.process} - {None}:  # a second run, had one started, too
            process.kill()
            process.wait()


def test_the_config_start_writes_lets_auto_take_the_plan_the_setup_tab_shows(tmp_path):
    """It wrote every option, gradient_checkpointing = false and optimizer = "adamw" too, which --auto then kept as
    the user's own: SDXL on a small card planned to fit in the Setup tab and fitted nothing at Start."""
    from lowvram.configure import read_config
    from lowvram.hardware import hardware_for
    from lowvram.plan import plan_options

    form = {"model": "sdxl", "data": "sample", "resolution": 1024}
    path = tmp_path / "run.toml"
    path.write_text(toml_text(form))
    hardware = hardware_for(None, "8GB", "32GB")
    shown, started = plan_options(form, hardware)[1], plan_options(read_config(path), hardware)[1]
    assert shown.choice is not None and started.choice is not None
    assert started.choice.strategy == shown.choice.strategy
    assert 'optimizer = "adamw8bit"' in toml_text({**form, "optimizer": "adamw8bit"})  # the user's own stays


def test_resume_takes_the_strategy_the_run_trained_with(tmp_path, sample_data):
    """The form's config leaves the strategy to --auto: a resume at the default optimizer was refused as another
    run than the one --auto's pick trained."""
    from conftest import run_config

    from lowvram.train.loop import train
    from lowvram.ui.runs import output_problem, with_recorded_strategy

    out = tmp_path / "out"
    train(run_config(output=str(out), data=str(sample_data), max_steps=2, checkpoint_every=1, optimizer="adafactor"))
    form = {"model": "tiny", "data": str(sample_data), "output": str(out), "max_steps": 4, "rank": 4, "alpha": 4,
            "resume": "auto"}
    config = tmp_path / "run.toml"
    config.write_text(toml_text(form))
    assert "--optimizer adafactor there, adamw here" in output_problem(config, "auto")
    config.write_text(toml_text(with_recorded_strategy(form, out)))
    assert output_problem(config, "auto") is None
    # a checkpoint accelerate launch's two processes wrote: said before the UI starts a run that refuses it
    from safetensors.torch import load_file, save_file

    rng = out / "checkpoints" / "step-000002" / "rng.safetensors"
    states = load_file(rng)
    save_file(states | {key.replace("rank0/", "rank1/"): value.clone() for key, value in states.items()}, rng)
    assert "was saved by a run of 2 process(es), this one has 1" in output_problem(config, "auto")


def test_start_passes_the_overwrite_ticked_and_a_checkpoint_typed_in_the_form(tmp_path):
    """The page said 'start over with --overwrite ticked (then Start)', and Start dropped the tick: refused again."""
    from lowvram.ui.runs import TrainingProcess

    out = tmp_path / "out"
    out.mkdir()
    (out / "out.safetensors").write_bytes(b"an earlier LoRA")
    toml = toml_text({"model": "tiny", "data": "sample", "output": str(out), "max_steps": 2})
    training = TrainingProcess()
    with pytest.raises(LowvramError, match="out.safetensors exists"):
        training.start(toml, tmp_path / "ui", out)
    try:
        training.start(toml, tmp_path / "ui", out, overwrite=True)
        assert training.process.args[-1] == "--overwrite"
        training.process.wait(timeout=300)
        assert training.process.returncode == 0 and list(out.glob("archive/*/out.safetensors"))
    finally:
        if training.process is not None and training.process.poll() is None:
            training.process.kill()


def test_a_run_an_earlier_ui_left_going_keeps_its_own_log_and_is_said_as_the_ui_ends(tmp_path):
    """A UI restarted on its port cut the log short that the earlier one's run still wrote to: the new run's log
    showed NUL bytes and the other run's lines."""
    from lowvram.ui.runs import TrainingProcess

    first, second = TrainingProcess("ui-run-7911"), TrainingProcess("ui-run-7911")
    try:
        first.start(toml_text({"model": "tiny", "data": "sample", "output": str(tmp_path / "long"), "max_steps": 100000,
                               "resolution": 64}), tmp_path / "ui", tmp_path / "long")
        deadline = time.time() + 120
        while time.time() < deadline and first.log_path.stat().st_size == 0:
            time.sleep(0.2)
        assert first.left_going().startswith(f"lowvram ui: its run goes on (pid {first.process.pid}, --output ")
        second.start(toml_text({"model": "tiny", "data": "sample", "output": str(tmp_path / "short"), "max_steps": 1,
                                "resolution": 64}), tmp_path / "ui", tmp_path / "short")
        assert second.process.wait(timeout=300) == 0
        time.sleep(1)  # (the first run writes on meanwhile)
        log = second.log_path.read_text(encoding="utf-8")
        assert "\x00" not in log and str(tmp_path / "long") not in log and str(tmp_path / "short") in log
        [kept] = (tmp_path / "ui").glob("ui-run-7911-*.log")  # the first run's, written on
        assert str(tmp_path / "long") in kept.read_text(encoding="utf-8")
    finally:
        for process in (first.process, second.process):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert first.left_going() is None


def test_an_error_shown_in_a_markdown_box_keeps_every_character_of_the_clis_line():
    """`<name>.safetensors` was taken for HTML and left out, `/tmp/a*b*c` shown as /tmp/abc."""
    import html

    from markdown_it import MarkdownIt

    from lowvram.ui.app import _message  # (the page's: its buttons named)

    line = "--data: folder not found: /tmp/a*b*c_d [1] #2 (the LoRA is <name>.safetensors; `x` | ~y~)"
    shown = html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").render(_message(LowvramError(line)))))
    assert shown.strip() == f"error: {line}"


def test_the_train_tab_reads_loss_records_past_a_bad_line_and_shows_the_newest_outputs_first(tmp_path):
    import json
    import os

    from lowvram.ui.runs import outputs_of, progress_line, read_metrics

    records = [{"step": step, "total_steps": 40, "loss": 0.5, "seconds": 1.0 if step <= 20 else 3.0,
                "vram_peak_gib": 1.25} for step in range(1, 31)]
    lines = [json.dumps(r) for r in records[:10]] + ["{half a line", json.dumps({"step": 10, "validation_loss": 0.3})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines + [json.dumps(r) for r in records[10:]]) + "\n")
    assert read_metrics(tmp_path) == records
    assert progress_line(records) == "step 30 of 40, loss 0.5000, VRAM peak 1.25 GiB, about 20 s left"
    # the smoothed loss the run's log prints, where the run records it (two numbers both called loss, otherwise)
    assert progress_line(records[:-1] + [records[-1] | {"loss_smoothed": 0.4321}]).startswith(
        "step 30 of 40, loss 0.4321 (smoothed), ")
    assert progress_line([]) == "waiting for the first step" and progress_line([], running=False) == ""
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-000002" / "lora.safetensors").write_bytes(b"")
    for age, name in ((100, "run-e0001.safetensors"), (0, "run.safetensors"), (50, "run-e0002.safetensors")):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))
    loras = [os.path.basename(p) for p in outputs_of(tmp_path)[1]]
    assert loras == ["run.safetensors", "run-e0002.safetensors", "run-e0001.safetensors"]


def test_a_render_that_fails_says_the_clis_line(tmp_path):
    from lowvram.errors import LowvramError
    from lowvram.ui.runs import render

    missing = tmp_path / "gone.safetensors"
    with pytest.raises(LowvramError, match=f"^--lora: file not found: {re.escape(str(missing))}$"):
        render("tiny", str(missing), "a prompt", tmp_path / "test.png", steps=1)


def test_a_caption_of_the_built_in_sample_is_not_edited_to_be_lost(tmp_path):
    """'saved', and the next check wrote the sample anew: the edit was gone."""
    from lowvram.data.sample import write_sample_dataset
    from lowvram.resolve import SAMPLE_DATASET
    from lowvram.ui import dataset as data_panel

    root = write_sample_dataset(tmp_path / SAMPLE_DATASET)
    with pytest.raises(LowvramError, match="^the built-in sample dataset is written anew at each check and run"):
        data_panel.save_caption(root, "5_lvshape/00_red_circle.png", "edited", tmp_path / "backup", sample=True)
    # a copy of it (of the same folder name, as cp -r keeps it) is the user's own to edit
    data_panel.save_caption(root, "5_lvshape/00_red_circle.png", "edited", tmp_path / "backup")
    assert (root / "5_lvshape" / "00_red_circle.txt").read_text() == "edited\n"


def test_a_kohya_dataset_file_in_the_form_brings_its_settings_and_its_captions_are_edited_in_place(tmp_path):
    """Typed as the dataset, a kohya dataset file's settings fill what the form leaves at its defaults; the
    dataset panel lists its images relative to the folder holding its image folders, and edits their captions."""
    from lowvram.data.sample import write_sample_dataset
    from lowvram.ui import dataset as data_panel

    images = write_sample_dataset(tmp_path / "data") / "5_lvshape"
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(f'[general]\nflip_aug = true\n[[datasets]]\nresolution = 64\nbatch_size = 2\n'
                       f'[[datasets.subsets]]\nimage_dir = "{images}"\nclass_tokens = "lvshape"\n')
    fields = form_fields()
    values = option_values(fields, form_values(fields, {"data": str(dataset), "batch_size": 3}))
    assert (values["resolution"], values["flip"], values["batch_size"]) == (64, True, 3)  # the form's own value wins
    summary, rows, usable, _, _ = data_panel.check_dataset(values | {"model": "tiny"})
    assert "6 usable" in summary and usable[0] == "00_red_circle.png"
    assert rows[0][4] == "lvshape, a red circle on a blue background"
    root = data_panel.images_root(str(dataset))
    assert root == images.resolve()
    data_panel.save_caption(root, usable[0], "lvshape, an edited circle", tmp_path / "backup")
    assert (images / "00_red_circle.txt").read_text() == "lvshape, an edited circle\n"
    assert data_panel.read_caption(root, usable[0]) == "lvshape, an edited circle"


def test_caption_edits_keep_each_datasets_first_original_and_write_the_file_training_reads(tmp_path):
    """The original survives a second edit; two datasets of one name keep theirs apart; the edit goes to the file
    training reads (.txt before .caption, RED.TXT in its case), stripped of the text box's spaces."""
    from lowvram.data.captions import read_caption_file
    from lowvram.ui import dataset as data_panel

    roots = [tmp_path / place / "data" for place in ("home", "drive")]
    for root in roots:
        (root / "1_x").mkdir(parents=True)
        for name in ("red", "blue"):
            Image.new("RGB", (64, 64), name).save(root / "1_x" / f"{name}.png")
    first, second = roots
    (first / "1_x" / "red.txt").write_bytes(b"the user's words\r\n")
    (first / "1_x" / "red.caption").write_text("an older caption\n")
    (second / "1_x" / "red.txt").write_text("words of the other dataset\n")
    (first / "1_x" / "blue.TXT").write_text("blue words\n")
    backups = [data_panel.backup_dir_for(tmp_path / "cache", root) for root in roots]
    assert backups[0] != backups[1]
    for text in ("  edited once \n\n", "edited twice"):
        data_panel.save_caption(first, "1_x/red.png", text, backups[0])
    data_panel.save_caption(second, "1_x/red.png", "edited", backups[1])
    assert (first / "1_x" / "red.txt").read_text() == "edited twice\n"
    assert (first / "1_x" / "red.caption").read_text() == "an older caption\n"
    assert read_caption_file(first / "1_x" / "red.png", ".txt")[0] == "edited twice"  # what training reads
    assert (backups[0] / "1_x" / "red.txt").read_bytes() == b"the user's words\r\n"
    assert (backups[1] / "1_x" / "red.txt").read_text() == "words of the other dataset\n"
    data_panel.save_caption(first, "1_x/blue.png", "  blue, edited ", backups[0])
    assert sorted(p.name for p in (first / "1_x").iterdir() if p.stem == "blue") == ["blue.TXT", "blue.png"]
    assert (first / "1_x" / "blue.TXT").read_text() == "blue, edited\n"
    assert data_panel.read_caption(first, "1_x/blue.png") == "blue, edited"
    # --caption-extension .caption: training reads red.caption first, and so does the editor
    assert data_panel.read_caption(first, "1_x/red.png", extension=".caption") == "an older caption"
    data_panel.save_caption(first, "1_x/red.png", "a caption edited", backups[0], extension=".caption")
    assert read_caption_file(first / "1_x" / "red.png", ".caption")[0] == "a caption edited"
    assert (first / "1_x" / "red.txt").read_text() == "edited twice\n"
    # a tagger's tags in .caption beside an empty .txt: training reads the .caption, and the editor showed the empty
    # .txt, whose save then hid the tags from training
    (first / "1_x" / "blue.TXT").write_text("\n")
    (first / "1_x" / "blue.caption").write_text("blue, tagged\n")
    assert data_panel.read_caption(first, "1_x/blue.png") == "blue, tagged"
    data_panel.save_caption(first, "1_x/blue.png", "blue, tagged, edited", backups[0])
    assert read_caption_file(first / "1_x" / "blue.png", ".txt")[0] == "blue, tagged, edited"


def test_the_forms_values_are_the_options_a_user_typed(tmp_path):
    """A whole number from a number box is an int (gr.Number gives 4.0); a list's blank lines and padding are not
    entries; a broken dataset file typed as the dataset leaves the other values (its check says what is wrong); a
    typed budget left empty is said, not planned for."""
    from lowvram.ui.planview import BUDGET, plan_for

    fields = {f.name: f for f in form_fields()}
    assert fields["rank"].from_form(4.0) == 4 and type(fields["rank"].from_form(4.0)) is int
    assert fields["sample_prompts"].from_form("a cat\n\n   a dog  \n") == ("a cat", "a dog")
    typed_letters = form_values(list(fields.values()), {"model": "tiny", "data": "sample", "rank": None})  # (letters)
    with pytest.raises(LowvramError, match="^--rank: .. is invalid: expected a whole number$"):
        build_config(option_values(list(fields.values()), typed_letters))  # (it trained at the default rank)
    broken = tmp_path / "dataset.toml"
    broken.write_text("[[datasets]\n")
    shown = form_values(list(fields.values()), {"data": str(broken), "rank": 8})
    assert option_values(list(fields.values()), shown) == {"data": str(broken), "rank": 8}
    with pytest.raises(LowvramError, match="^--vram: type a budget such as 6GB$"):
        plan_for({"model": "sd15"}, BUDGET, "")


def test_the_check_tab_tells_usable_from_skipped_and_counts_template_captions(tmp_path):
    """Only usable images are offered for caption editing; each row says why it was skipped or what was noted; the
    captions line counts the images the template captions; the buckets are the chosen model's (SDXL: 1024)."""
    from lowvram.ui import dataset as data_panel

    folder = tmp_path / "data" / "1_x"
    folder.mkdir(parents=True)
    for name in ("captioned", "uncaptioned", "blank"):
        Image.new("RGB", (512, 512), "red").save(folder / f"{name}.png")
    (folder / "captioned.txt").write_text("a red square, flat")
    (folder / "blank.txt").write_text("  \n")
    (folder / "broken.png").write_bytes(b"not a png")
    summary, rows, usable, _, _ = data_panel.check_dataset({"data": str(tmp_path / "data"), "model": "sdxl"})
    status = {row[0]: row[1] for row in rows}
    assert status == {"1_x/blank.png": "usable", "1_x/broken.png": "skipped", "1_x/captioned.png": "usable",
                      "1_x/uncaptioned.png": "usable"}
    assert sorted(usable) == ["1_x/blank.png", "1_x/captioned.png", "1_x/uncaptioned.png"]
    notes = {row[0]: row[2] for row in rows}
    assert notes["1_x/broken.png"].startswith("not an image") and "template used" in notes["1_x/uncaptioned.png"]
    assert {row[3] for row in rows if row[1] == "usable"} == {"1024x1024"}
    assert "captions: 1 from caption or metadata files, 2 from the template" in summary


def test_the_plan_panel_tells_unverified_from_too_big():
    """In 1.9 GB only strategies no GPU result shows fit SD1.5: the panel says so and draws the fastest that fits;
    a T4 (no bf16) trains one seen in bf16, and the panel says that; SDXL in 2 GB does not fit and is drawn as its
    leanest candidate."""
    from lowvram.ui.planview import BUDGET, _strategy, plan_for, render

    small = plan_for({"model": "sd15"}, BUDGET, "1.9GB")
    fastest_fitting = next(c for c in small["candidates"] if c["fits"])
    assert not small["fits"] and "fits, but not yet seen training on a GPU" in render(small)
    assert f"<b>{_strategy(fastest_fitting['strategy'])}</b>" in render(small)
    t4 = plan_for({"model": "sd15"}, "colab-t4", "")
    assert t4["fits"] and "fits: chose fp16 adamw: no GPU result shows fp16 training yet" in render(t4)
    tiny = plan_for({"model": "sdxl"}, "gtx-1650-4gb", "")
    assert not any(c["fits"] for c in tiny["candidates"]) and "&mdash; does not fit" in render(tiny)
    small_card = plan_for({"model": "sd15"}, "gtx-1650-4gb", "")  # its pick is slower than six that do not fit
    picked = small_card["choice"]
    assert small_card["candidates"].index(picked) >= 6
    assert render(small_card).split("<table")[1].count(f"<td>{_strategy(picked['strategy'])}</td>") == 1


def test_auto_runs_within_the_card_the_plan_shows():
    """--auto with a card profile chosen planned for the GPU present, not the card the Setup tab showed: the run is
    held to the profile's budget, as to a typed one."""
    from lowvram.hardware import load_profile, parse_size
    from lowvram.ui.planview import BUDGET, THIS_GPU, run_budget

    profile = load_profile("gtx-1650-4gb")
    assert abs(parse_size(run_budget("gtx-1650-4gb", ""), "--vram") - profile.free_vram) < 2**20
    assert (run_budget(BUDGET, "6GB"), run_budget(THIS_GPU, "")) == ("6GB", "")


def test_two_uis_keep_their_own_run_config_and_log(tmp_path):
    """Two `lowvram ui` on two ports share the cache folder; each run's config and log are its UI's own."""
    from lowvram.ui.runs import TrainingProcess

    first, second = TrainingProcess("ui-run-7860"), TrainingProcess("ui-run-7861")
    for training, rank in ((first, 0), (second, -3)):  # runs that stop at their option check, each its own way
        training.start(f'[model]\nmodel = "tiny"\n[data]\ndata = "sample"\n[network]\nrank = {rank}\n', tmp_path,
                       tmp_path / "out")
    for training, rank in ((first, 0), (second, -3)):
        assert training.process.wait(timeout=120) == 2
        assert f"--rank: must be > 0, got {rank}" in training.log_tail()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ui-run-7860.log", "ui-run-7860.toml", "ui-run-7861.log",
                                                          "ui-run-7861.toml"]


def test_the_time_left_is_shown_only_while_the_run_goes():
    from lowvram.ui.runs import progress_line

    records = [{"step": 5, "total_steps": 300, "loss": 0.1, "seconds": 1.2}]
    assert progress_line(records).endswith("about 354 s left")
    assert progress_line(records, running=False) == "step 5 of 300, loss 0.1000"


def test_checking_a_folder_without_images_says_so_in_the_clis_words(tmp_path):
    """An empty dataset (or one of captions only) is not a silent "0 usable of 0": the CLI's line says why."""
    from lowvram.ui import dataset as data_panel

    (tmp_path / "5_thing").mkdir()
    (tmp_path / "5_thing" / "1.txt").write_text("a caption without its image")
    summary, _, usable, _, _ = data_panel.check_dataset({"data": str(tmp_path), "model": "tiny"})
    shown = summary.replace("\\", "")  # (as Markdown shows it: its characters escaped)
    assert "**error:** --data: no images (.png, .jpg" in shown and f"in {tmp_path} or its N_name" in shown
    assert usable == []


def test_checking_a_dataset_checks_its_class_images_too(tmp_path, sample_data):
    """The form's --reg-data was left out: an empty class folder, or one named with the trigger word, checked
    clean, where check-data --reg-data refuses the one and warns of the other."""
    from PIL import Image

    from lowvram.ui import dataset as data_panel

    (tmp_path / "reg" / "1_lvshape thing").mkdir(parents=True)
    values = {"data": str(sample_data), "reg_data": str(tmp_path / "reg"), "model": "tiny"}
    shown = data_panel.check_dataset(values)[0].replace("\\", "")
    assert "**error:** --reg-data: no images (.png, .jpg" in shown, shown
    for n in range(3):
        Image.new("RGB", (64, 64), (60 * n, 30, 30)).save(tmp_path / "reg" / "1_lvshape thing" / f"{n}.png")
    shown = data_panel.check_dataset(values | {"trigger_word": "lvshape"})[0].replace("\\", "")
    assert "class images (--reg-data): 3 usable, 0 skipped" in shown
    assert "regularization: its 3 samples are repeated to 30 each epoch" in shown
    assert "warning: 3 class image(s) are captioned with the trigger word 'lvshape'" in shown
    shown = data_panel.check_dataset(values | {"prior_loss_weight": 0})[0].replace("\\", "")
    assert "warning: regularization: its 3 samples are repeated to 30 each epoch" in shown, shown


def test_checking_the_sample_dataset_checks_the_built_in_one(tmp_path, monkeypatch):
    from lowvram.ui import dataset as data_panel

    monkeypatch.chdir(tmp_path)  # no folder named sample here
    values = {"data": "sample", "model": "tiny", "cache_dir": str(tmp_path / "cache")}
    summary, _, usable, checked, extensions = data_panel.check_dataset(values)
    assert set(extensions) == set(usable) and set(extensions.values()) == {".txt"}
    assert "**6 usable, 0 skipped** of 6 images" in summary and len(usable) == 6
    assert (data_panel.images_root(checked) / usable[0]).is_file()


def test_the_check_counts_the_images_in_folders_passed_over(tmp_path):
    """The UI said "125 usable, 0 skipped" of an archive whose other 1441 images sat in folders passed over."""
    from PIL import Image

    from lowvram.ui import dataset as data_panel

    for folder in ("5_thing", "misc"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.new("RGB", (64, 64), (9, 90, 200)).save(tmp_path / "data" / folder / "a.png")
    values = {"data": str(tmp_path / "data"), "model": "tiny", "cache_dir": str(tmp_path / "cache")}
    summary = data_panel.check_dataset(values)[0]
    assert "**1 usable, 0 skipped** of 1 images, 1 more in folders passed over (below)" in summary, summary
    assert "skipped folder misc/ (1 image in it and below do not train)" in summary


def test_save_toml_writes_only_a_toml(tmp_path, monkeypatch):
    """--config reads a .json as a OneTrainer or kohya_ss GUI config: lowvram's options are never saved as one."""
    from lowvram.errors import LowvramError
    from lowvram.ui.app import save_toml

    values = {"model": "tiny", "data": "sample", "rank": 8}
    with pytest.raises(LowvramError, match=r"^--config: .*x\.json: lowvram's options are written as \.toml; name it "
                                           r"x\.toml$"):
        save_toml(str(tmp_path / "x.json"), values)
    assert list(tmp_path.iterdir()) == []
    assert save_toml(str(tmp_path / "x.toml"), values).startswith(f"saved {tmp_path / 'x.toml'}: ")
    # Auto ticked: the file leaves the strategy to --auto, which the command it names gives (with the card's budget)
    assert save_toml(str(tmp_path / "x.toml"), values, "6GB").endswith(
        f"`lowvram train --config {tmp_path / 'x.toml'} --auto --vram 6GB` runs it")
    assert read_toml(tmp_path / "x.toml")["rank"] == 8
    # a Windows path (a file named C:\Users\... was written here, and D:/ made a folder D:), and one pasted with
    # Explorer's Copy as path quotes ("name it x.toml", of a name ending in .toml)
    monkeypatch.chdir(tmp_path)
    for windows in ("C:\\Users\\me\\run.toml", "D:/kohya/run.toml"):
        with pytest.raises(LowvramError, match=r"that is a Windows path: give where it is on this machine"):
            save_toml(windows, values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.toml"]
    assert save_toml(f'"{tmp_path / "y.toml"}"', values).startswith(f"saved {tmp_path / 'y.toml'}: ")


def test_save_toml_never_writes_over_a_runs_own_options_and_says_where_it_wrote(tmp_path, monkeypatch):
    """Save .toml over out6/out6.toml, a run's own file (its resume reads it), replaced it without a word: the run
    could no longer resume from it. A relative name was said as given, not where the UI wrote it."""
    from conftest import run_config

    from lowvram.errors import LowvramError
    from lowvram.train.loop import train
    from lowvram.ui.app import save_toml

    run = tmp_path / "out6"
    train(run_config(output=str(run), max_steps=1, cache_dir=str(tmp_path / "cache")))
    own = run / "out6.toml"
    before = own.read_text()
    with pytest.raises(LowvramError, match=f"^--config: {re.escape(str(own))} is the options of the run in "):
        save_toml(str(own), {"model": "tiny-sdxl", "data": "sample"})
    assert own.read_text() == before
    for _ in range(2):  # another name in the run's folder is the user's own, saved again as often as they like
        assert save_toml(str(run / "variant.toml"), {"model": "tiny", "data": "sample"}).startswith("saved ")
    monkeypatch.chdir(tmp_path)
    assert save_toml("mine.toml", {"model": "tiny", "data": "sample"}).startswith(f"saved {tmp_path / 'mine.toml'}: ")


def test_a_fractional_whole_number_option_is_refused_not_rounded():
    """2.5 typed into --rank reaches the config, which refuses it in one line, as the CLI does; 16 stays 16."""
    gr = pytest.importorskip("gradio")
    from lowvram.errors import LowvramError
    from lowvram.ui.app import _component

    fields = form_fields()
    rank = next(f for f in fields if f.name == "rank")
    with gr.Blocks():
        box = _component(gr, rank)
    shown = dict(zip([f.name for f in fields], form_values(fields, {}), strict=True))
    shown["rank"] = box.preprocess(2.5)
    with pytest.raises(LowvramError, match=r"^--rank: 2\.5 is invalid: expected a whole number$"):
        toml_text(option_values(fields, [shown[f.name] for f in fields]) | {"model": "tiny", "data": "sample"})
    shown["rank"] = box.preprocess(16.0)
    assert "rank" not in option_values(fields, [shown[f.name] for f in fields])


def _cli_train_error(config, resume: bool) -> str:
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--config", str(config),
                           *(["--resume", "auto"] if resume else [])],
                          capture_output=True, text=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    return done.stderr.strip().splitlines()[-1].removeprefix("lowvram train: error: ")


def test_start_refuses_a_folder_holding_another_run_in_the_clis_words(tmp_path):
    """Start on an --output folder that holds a run, or Resume with other options, is refused before any process
    starts, in the line `lowvram train` stops at; the Train tab keeps showing the earlier run, not a new one."""
    import json

    from lowvram.errors import LowvramError
    from lowvram.train.outdir import RECORD
    from lowvram.ui.runs import TrainingProcess

    finished, changed = tmp_path / "finished", tmp_path / "changed"
    finished.mkdir()
    (finished / "finished.safetensors").write_bytes(b"a finished run's LoRA")
    (finished / "metrics.jsonl").write_text('{"step": 5, "total_steps": 10, "loss": 0.1, "lr": 0.0001}\n')
    changed.mkdir()
    (changed / RECORD).write_text(json.dumps({"identity": "0" * 16, "recipe": {"--rank": 8}, "name": "changed"}))
    (changed / "checkpoints" / "step-5").mkdir(parents=True)
    (changed / "checkpoints" / "step-5" / "state.json").write_text("{}")
    for folder, resume in ((finished, None), (changed, "auto")):
        text = toml_text({"model": "tiny", "data": "sample", "output": str(folder), "max_steps": 2})
        config = tmp_path / f"{folder.name}.toml"
        config.write_text(text)
        training = TrainingProcess()
        with pytest.raises(LowvramError) as refused:
            training.start(text, tmp_path / "ui", folder, resume=resume)
        assert str(refused.value) == _cli_train_error(config, resume)
        assert training.process is None and training.output is None and training.run_folder() is None


def test_an_earlier_runs_files_are_not_the_new_runs_until_it_holds_the_folder(tmp_path):
    import os
    import time

    from lowvram.train.outdir import RECORD
    from lowvram.ui.runs import TrainingProcess

    (tmp_path / RECORD).write_text("{}")
    earlier = time.time() - 60
    os.utime(tmp_path / RECORD, (earlier, earlier))
    training = TrainingProcess(output=tmp_path, started=time.time())
    assert training.run_folder() is None  # the earlier run's record: its metrics are not this run's progress
    (tmp_path / RECORD).write_text("{}")  # the run took the folder
    assert training.run_folder() == tmp_path


def test_kohya_ss_and_a1111_launch_flags_are_taken_or_named(capsys):
    """kohya_ss's GUI takes --listen 0.0.0.0 and --inbrowser; A1111 --listen alone; their other flags are named."""
    from lowvram.cli import build_parser, main

    for given, host in (([], None), (["--listen"], "0.0.0.0"), (["--listen", "192.168.1.5"], "192.168.1.5")):
        args = build_parser().parse_args(["ui", *given, "--inbrowser"])
        assert (args.listen, args.inbrowser) == (host, True)
    for given, named in ((["--server_port", "7861"], ("--server_port is from kohya_ss's GUI or AUTOMATIC1111; "
                                                       "lowvram ui's is --port")),
                         (["--gradio-auth", "me:pw"], "lowvram ui's is --auth USER:PASSWORD")):
        assert main(["ui", *given]) == 2
        assert named in capsys.readouterr().err
    assert main(["ui", "--headless", "--port", "1", "--listen", "::1"]) == 2  # kohya_ss's --headless: taken
    assert capsys.readouterr().err.endswith("error: --listen ::1: the app serves IPv4 addresses only; give one, or "
                                            "--listen alone for all of them\n")
    for address, said in (("192.0.2.7", ""), ("0.0.0.0:7860", "; the port goes to --port")):  # (192.0.2/24: no one's)
        assert main(["ui", "--listen", address, "--auth", "me:pw"]) == 2
        assert capsys.readouterr().err.endswith(f"error: --listen {address}: not an address of this machine; give one "
                                                f"of its addresses, or --listen alone for all of them{said}\n")


def test_a_public_link_needs_a_login_and_an_open_network_is_warned_about(capsys, monkeypatch):
    from lowvram.errors import LowvramError
    from lowvram.ui.app import exposed, login

    monkeypatch.delenv("LOWVRAM_UI_AUTH", raising=False)
    assert [exposed(host) for host in (None, "127.0.0.1", "127.0.1.1", "localhost", "0.0.0.0", "192.168.1.5",
                                       "myhost")] == [False, False, False, False, True, True, True]
    with pytest.raises(LowvramError, match="--share: a public gradio.live link lets anyone who has it start runs"):
        login(None, share=True, listen=False)
    assert login(None, share=False, listen=True) is None
    assert "warning: --listen without --auth" in capsys.readouterr().err
    # a lab machine: every account reaches 127.0.0.1
    assert login(None, share=False, listen=False, others=("stu2",)) is None
    assert ("other users use this machine (stu2), and each can open the app on 127.0.0.1 and start runs and write "
            "files as you; set LOWVRAM_UI_AUTH=USER:PASSWORD") in capsys.readouterr().err
    assert login(None, share=False, listen=False) is None and not capsys.readouterr().err
    assert login("me:s3cret:x", share=True, listen=True) == ("me", "s3cret:x")
    for bad in ("me", ":pw", "me:"):
        with pytest.raises(LowvramError, match="--auth: give it as USER:PASSWORD"):
            login(bad, share=False, listen=False)
    # the login kept out of the command line, which every account's `ps` shows
    monkeypatch.setenv("LOWVRAM_UI_AUTH", "me:pw")
    assert login(None, share=True, listen=True, others=("stu2",)) == ("me", "pw") and not capsys.readouterr().err
    assert login("you:pw2", share=False, listen=False) == ("you", "pw2")  # (the flag given wins)
    monkeypatch.setenv("LOWVRAM_UI_AUTH", "me")
    with pytest.raises(LowvramError, match="LOWVRAM_UI_AUTH: give it as USER:PASSWORD"):
        login(None, share=False, listen=False)


def test_another_account_running_programs_here_counts_as_a_user_of_the_machine():
    """A batch node or a container keeps no login records: psutil.users() was empty, so a classmate's jobs on the
    same machine went unseen and the app served them unwarned."""
    import shutil
    import subprocess

    from lowvram.ui.app import other_users

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to run a program as another account")
    classmate = subprocess.Popen(["setpriv", "--reuid", "54321", "--regid", "54321", "--clear-groups", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while "54321" not in other_users() and time.monotonic() < deadline:  # (setpriv's exec: a moment)
            time.sleep(0.1)
        assert "54321" in other_users()
    finally:
        classmate.kill()
        classmate.wait()
    assert "54321" not in other_users()


def test_the_server_hands_out_no_file_of_this_machine(tmp_path):
    """It served every file under the folder it was started in (its allowed paths): an ~/.ssh key to anyone who
    could reach the page. The pictures it shows go out as pixels; its copies stay in a folder only the user reads."""
    import urllib.error
    import urllib.request

    from ui_server import served_ui

    pytest.importorskip("gradio")
    (tmp_path / "secret.txt").write_text("top secret")
    with served_ui(tmp_path, tmp_path / "cache", tmp_path / "ui.log") as url:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/gradio_api/file={tmp_path / 'secret.txt'}", timeout=10)
        assert refused.value.code == 403
        refused.value.close()
        assert (tmp_path / "cache" / "ui" / f"gradio-{os.getuid()}").stat().st_mode & 0o777 == 0o700
    said = (tmp_path / "ui.log").read_text()  # its own words: Gradio's would tell a user to edit launch()
    assert f"lowvram ui: {url}/; Ctrl-C stops it" in said and "launch()" not in said, said


def test_an_unwritable_cache_leaves_the_app_served_and_says_so(tmp_path):
    """A lab's cache a student cannot write (not in its group): `lowvram ui` ended in a PermissionError traceback,
    where a run warns and goes on. (Here its ui/ is a file, which root cannot write into either.)"""
    from ui_server import served_ui

    pytest.importorskip("gradio")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "ui").write_text("")
    with served_ui(tmp_path, tmp_path / "cache", tmp_path / "ui.log"):
        said = " ".join((tmp_path / "ui.log").read_text().split())
    assert f"warning: the cache {tmp_path / 'cache'} cannot be written (" in said and "the app keeps its runs' " \
        "configs and logs, renders and image copies in" in said and "Traceback" not in said, said
    kept = Path(re.search(r"image copies in (\S+) meanwhile", said).group(1))
    assert kept.is_relative_to(tempfile.gettempdir()) and not kept.exists()  # (removed when it ended)


def test_a_test_image_renders_any_lora_file_and_any_prompt(tmp_path):
    """Render takes a LoRA of an earlier session's run typed in, and a prompt that starts like a flag."""
    from conftest import run_config

    from lowvram.train.loop import train
    from lowvram.ui.runs import render

    lora = train(run_config(output=str(tmp_path / "earlier"), max_steps=1)).lora_path
    image = render("tiny", str(lora), "--lvshape", tmp_path / "test.png", steps=1)  # (one word: no space)
    assert image.is_file()


def test_a_photo_past_pillows_warning_is_previewed_quietly(tmp_path):
    """Images up to Pillow's refusal train (the scan lets them through), so the caption editor shows them: without
    Pillow's "decompression bomb" warning, and a JPEG decoded reduced."""
    import warnings

    from PIL import Image

    from lowvram.ui.app import _picture

    pytest.importorskip("gradio")
    Image.new("L", (10_000, 9_000), 200).save(tmp_path / "phone.png", compress_level=1)
    Image.new("RGB", (10_000, 9_000), (200, 10, 10)).save(tmp_path / "phone.jpg", quality=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for name in ("phone.png", "phone.jpg"):
            shown = _picture(tmp_path / name, 256)
            assert shown.mode == "RGB" and max(shown.size) == 256


def test_the_caption_editor_edits_the_file_each_kohya_subset_reads(tmp_path, monkeypatch):
    """A kohya dataset file sets caption_extension per subset (kohya's default, .caption, where a subset names
    none): the editor shows and writes the file training reads for each image, not the form's extension's."""
    import tomli_w

    from lowvram.ui import dataset as data_panel

    monkeypatch.chdir(tmp_path)
    for name, extension in (("alpha", ".caption"), ("beta", ".txt")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.new("RGB", (96, 96), (20, 40, 60)).save(tmp_path / "imgs" / name / "a.png")
        (tmp_path / "imgs" / name / f"a{extension}").write_text(f"{name} as trained\n")
        (tmp_path / "imgs" / name / ("a.txt" if extension == ".caption" else "a.caption")).write_text("not read\n")
    (tmp_path / "ds.toml").write_text(tomli_w.dumps({"datasets": [{"subsets": [
        {"image_dir": "imgs/alpha"}, {"image_dir": "imgs/beta", "caption_extension": ".txt"}]}]}))
    given = {"data": str(tmp_path / "ds.toml"), "model": "tiny", "cache_dir": str(tmp_path / "cache")}
    values = option_values(*zip(*[(field, field.to_form(given.get(field.name, field.default)))
                                  for field in form_fields()]))  # as the form hands them over: the file's settled
    summary, rows, _, checked, extensions = data_panel.check_dataset(values)
    assert extensions == {"alpha/a.png": ".caption", "beta/a.png": ".txt"}, summary
    assert {row[0]: row[4] for row in rows} == {"alpha/a.png": "alpha as trained", "beta/a.png": "beta as trained"}
    root = data_panel.images_root(checked)
    for relpath, extension in extensions.items():
        assert data_panel.read_caption(root, relpath, None, extension).endswith("as trained")
        data_panel.save_caption(root, relpath, "edited", tmp_path / "kept", None, extension)
        assert (root / relpath).with_suffix(extension).read_text() == "edited\n"
    assert (root / "alpha" / "a.txt").read_text() == (root / "beta" / "a.caption").read_text() == "not read\n"


def test_a_loaded_configs_notes_reach_the_page(tmp_path, sample_data):
    """What reading another trainer's config says (read as what, what it leaves to lowvram) was printed in the
    terminal running `lowvram ui`, which a GUI user does not watch: the page shows it beside "loaded"."""
    import json

    from lowvram.ui.form import read_for_form

    config = tmp_path / "ot.json"
    config.write_text(json.dumps({"__version": 9, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_15",
                                  "base_model_name": "tiny", "resolution": "64",
                                  "concepts": [{"name": "shapes", "path": str(sample_data)}]}))
    values, notes = read_for_form(config)
    assert values["model"] == "tiny"
    assert notes[0] == f"{config}: read as a OneTrainer config"
    assert any("left to lowvram's planner" in note for note in notes), notes
    config.write_text(json.dumps({**json.loads(config.read_text()), "learning_rate": -1}))
    with pytest.raises(LowvramError) as error:  # a problem too: the notes with it, not lost
        read_for_form(config)
    assert str(error.value).startswith(f"{config}: read as a OneTrainer config\n") and "--lr" in str(error.value)


def test_a_preset_replaces_only_its_own_settings_and_the_last_presets():
    from lowvram.configure import preset_path, read_toml
    from lowvram.ui.form import replaced_by_preset, with_preset

    style, character = read_toml(preset_path("style")), read_toml(preset_path("character"))
    typed = {"model": "tiny", "data": "sample", "max_steps": 30, "rank": 64}
    chosen = with_preset(typed, style, None)
    assert chosen == {"model": "tiny", "data": "sample"} | style  # its epochs answer max steps; its rank wins
    again = with_preset(chosen, character, style)
    assert again == {"model": "tiny", "data": "sample"} | character
    assert "noise_offset" in style and "noise_offset" not in again  # the style's, left as it set it
    kept = with_preset(chosen | {"caption_dropout": 0.2}, character, style)
    assert kept["caption_dropout"] == 0.2  # changed by hand since: the user's
    # what the user typed that a preset replaced is said (the last preset's own settings are not the user's)
    assert replaced_by_preset(typed, chosen, None) == "--max-steps 30 --rank 64"
    typed_since = chosen | {"lr": 5e-5, "rank": 8}
    assert replaced_by_preset(typed_since, with_preset(typed_since, character, style), style) == "--rank 8 --lr 5e-05"


def test_the_last_presets_settings_are_known_as_the_form_reads_them_back():
    """The form gives optional numbers back as text ('10'), the preset file as numbers (10): compared as they were,
    the last preset's epochs and min-SNR looked typed by the user and stayed under the next preset."""
    from lowvram.ui.form import given_values, with_preset

    fields = form_fields()
    previous = {"epochs": 10, "min_snr_gamma": 5.0, "lr": 1e-4}
    shown = given_values(fields, form_values(fields, previous | {"data": "sample"}))
    read_back = given_values(fields, form_values(fields, previous))
    assert with_preset(shown, {"rank": 4}, read_back) == {"data": "sample", "rank": 4}


@pytest.mark.skipif(os.name == "nt", reason="Windows binds no port in TIME-WAIT otherwise")
def test_a_port_a_stopped_ui_left_waiting_serves_again_and_a_served_one_is_refused():
    """A UI stopped with a page open leaves its connections in TIME-WAIT for a minute: the restart was refused as
    'another lowvram ui?' though the server would have bound."""
    import socket

    from lowvram.ui.app import _check_port

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as uvicorn binds)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    with pytest.raises(LowvramError, match=f"--port {port}: .*another lowvram ui"):
        _check_port("127.0.0.1", port)  # served
    accepted.close()  # the server's side closes first: its side waits (TIME-WAIT)
    server.close()
    client.recv(1)
    client.close()
    _check_port("127.0.0.1", port)


def test_the_pages_errors_name_its_buttons_where_the_cli_names_their_flags(tmp_path):
    """'continue its run with --resume auto, start over with --overwrite' on a page whose Resume button and
    --overwrite box do it."""
    from conftest import run_config

    from lowvram.errors import LowvramError
    from lowvram.train.loop import train
    from lowvram.ui.app import _message  # (the page's: its buttons named)

    train(run_config(output=str(tmp_path / "out"), max_steps=1, cache_dir=str(tmp_path / "cache")))
    with pytest.raises(LowvramError) as refused:
        train(run_config(output=str(tmp_path / "out"), max_steps=2, overwrite=False,
                         cache_dir=str(tmp_path / "cache")))
    assert "--resume auto" in str(refused.value)
    shown = _message(refused.value)
    assert _message(LowvramError("--rank: '' is invalid: expected a whole number")) == (
        "**error:** --rank: empty, or not a number (letters typed?): expected a whole number")
    assert "with the Train tab's Resume" in shown and "start over with --overwrite ticked (then Start)" in shown
    assert "--resume auto" not in shown
    with pytest.raises(LowvramError) as refused:  # another rank: the run's options are the Load .toml box's
        train(run_config(output=str(tmp_path / "out"), max_steps=2, rank=8, resume="auto",
                         cache_dir=str(tmp_path / "cache")))
    assert f"(Load .toml {tmp_path / 'out' / 'out.toml'} gives them)" in _message(refused.value).replace("\\", "")


def test_the_runs_log_names_the_pages_buttons_where_it_names_keys_and_commands(tmp_path):
    """'press Ctrl-C again', 'continue with: lowvram train --config ... --resume auto' on a page of Stop and Resume."""
    from lowvram.train.outdir import continue_line
    from lowvram.ui.runs import TrainingProcess

    folder, log = tmp_path / "it's my out", tmp_path / "ui-run.log"  # (an apostrophe: shell_line's quoting, which
    # the page's words unquote)
    log.write_text("stopping after this step and saving a checkpoint (press Ctrl-C again to stop at once)\n"
                   f"interrupted at step 3 of 30; continue with: {continue_line(folder, 'run')}\n")
    shown = TrainingProcess(log_path=log).log_tail()
    assert "(press Stop again to stop at once)" in shown
    assert f"continue with: the Train tab's Resume (first Load .toml {folder / 'run.toml'}, where" in shown


def test_start_and_resume_name_a_run_still_going_in_the_output_folder(tmp_path):
    """A UI restarted while its run went on: Start called the run's folder 'an earlier run' to --overwrite, and
    Resume started a run that failed on the folder's lock."""
    import subprocess
    import sys

    from lowvram.ui.runs import output_problem

    out = tmp_path / "out"
    config = tmp_path / "run.toml"
    config.write_text(toml_text({"model": "tiny", "data": "sample", "output": str(out), "max_steps": 2}))
    holding = ("import sys, time\nfrom pathlib import Path\nfrom lowvram.train.folder_lock import FolderLock\n"
               "FolderLock(Path(sys.argv[1])).acquire()\nprint('ready', flush=True)\ntime.sleep(600)")
    out.mkdir()
    run = subprocess.Popen([sys.executable, "-c", holding, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "ready"
        for resume in (None, "auto"):
            assert output_problem(config, resume).startswith(f"--output: {out} is in use by another lowvram run "
                                                             f"(pid {run.pid}, since ")
    finally:
        run.kill()
        run.wait()
