"""One output folder, one run: a reused folder never mixes two runs or loses a trained LoRA, `--resume` continues
only its own run, and a second run on a folder in use is refused while the first lives."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import run_config, without_root_override
from preloaded import Run, run
from safetensors.torch import load_file

from lowvram.errors import LowvramError, TrainingInterrupted
from lowvram.train import checkpoint_folders
from lowvram.train.folder_lock import LOCK
from lowvram.train.loop import train
from lowvram.train.outdir import ARCHIVE, RECORD


def test_a_run_stopped_at_once_names_the_checkpoint_it_left_and_the_command_that_continues(tmp_path, monkeypatch,
                                                                                           capsys):
    """A second Ctrl-C during a save said only 'interrupted'."""
    from lowvram.cli import main
    from lowvram.train import saving

    written = saving.save_checkpoint

    def second_ctrl_c_in_the_second_save(*args, **kwargs):
        path = written(*args, **kwargs)
        if len(list((tmp_path / "checkpoints").glob("step-*"))) == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(saving, "save_checkpoint", second_ctrl_c_in_the_second_save)
    assert main(["train", "--model", "tiny", "--data", "sample", "--resolution", "64", "--max-steps", "5",
                 "--checkpoint-every", "1", "--output", str(tmp_path)]) == 130
    assert (f"lowvram train: interrupted; kept: checkpoint step-000002; continue with: lowvram train --config "
            f"{tmp_path / tmp_path.name}.toml --resume auto") in capsys.readouterr().err
    # stopped at once before its first checkpoint: said (it was "interrupted" alone, its steps lost unsaid)
    from lowvram.train import loop

    stepped = loop.forward_backward

    def second_ctrl_c_in_step_2(session, trainee, batches, splits, step):
        if step == 2:
            raise KeyboardInterrupt
        return stepped(session, trainee, batches, splits, step)

    monkeypatch.setattr(loop, "forward_backward", second_ctrl_c_in_step_2)
    assert main(["train", "--model", "tiny", "--data", "sample", "--resolution", "64", "--max-steps", "5",
                 "--checkpoint-every", "3", "--output", str(tmp_path / "early")]) == 130
    assert ("lowvram train: interrupted; no checkpoint of this run yet, so no step of it is kept: the same command "
            "starts it again (with what it cached)") in capsys.readouterr().err
    # under accelerate launch: the launch that resumes it, with as many processes (it said plain lowvram train)
    from lowvram.cli import _kept_on_interrupt

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _kept_on_interrupt(run_config(output=str(tmp_path), resume="auto"), 0).endswith(
        f"continue with: accelerate launch --multi_gpu --num_processes 2 -m lowvram train --config "
        f"{tmp_path / tmp_path.name}.toml --resume auto")


def interrupted(config, after_steps: int = 3) -> int:
    """Train until `after_steps` steps are logged, then Ctrl-C (a real SIGINT); returns the step it stopped at."""
    metrics = config.output_dir / "metrics.jsonl"

    def press_ctrl_c():
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= after_steps):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(TrainingInterrupted):
        train(config)
    return sum('"loss"' in line for line in metrics.read_text().splitlines())  # (not its "end" line)


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_run_in_a_folder_holding_another_runs_checkpoints_stops_and_loses_nothing(tmp_path):
    out = tmp_path / "x"
    first = run_config(output=str(out), max_steps=40, checkpoint_every=1, overwrite=False)
    stopped = interrupted(first)
    before = snapshot(out)

    other = run_config(output=str(out), max_steps=3, rank=8, overwrite=False)
    with pytest.raises(LowvramError) as refused:
        train(other)
    message = str(refused.value)
    assert "another run (" in message and "--rank 4 there, 8 here" in message
    assert "--resume auto" in message and "--overwrite" in message and "\n" not in message
    same_options = run_config(output=str(out), max_steps=3, overwrite=False)
    with pytest.raises(LowvramError, match="holds an earlier run of these options with checkpoints up to step"):
        train(same_options)
    # another name, as kohya_ss users keep mychar and mychar_v2 in one folder: its checkpoints are not this run's
    renamed = run_config(output=str(out), max_steps=3, overwrite=False, name="x_v2")
    with pytest.raises(LowvramError) as refused:
        train(renamed)
    assert str(refused.value) == (f"--output: {out} holds the run named x with checkpoints up to step {stopped}; "
                                  "train x_v2 into a folder of its own, one run per folder (--output "
                                  f"{out.parent / 'x_v2'} --copy-to {out} puts its LoRA here too), continue x with "
                                  "--name x "
                                  "--resume auto, start over "
                                  f"with --overwrite (its files move to {out / ARCHIVE}/)")
    (out / "x.toml").rename(out / "x x.toml")  # a name with a space (a Drive folder's): quoted, to paste
    record = (out / "lowvram-run.json").read_bytes()
    (out / "lowvram-run.json").write_text(json.dumps(json.loads(record) | {"name": "x x"}))
    with pytest.raises(LowvramError, match="continue x x with --name 'x x' --resume auto"):
        train(renamed)
    (out / "x x.toml").rename(out / "x.toml")
    (out / "lowvram-run.json").write_bytes(record)
    assert snapshot(out) == before  # nothing written, nothing pruned

    # --overwrite: the earlier run's files move to archive/, and this run's own final checkpoint survives pruning
    result = train(run_config(output=str(out), max_steps=3, rank=8, overwrite=True, keep_checkpoints=1))
    [archived] = (out / ARCHIVE).iterdir()
    assert (archived / "checkpoints" / f"step-{stopped:06d}").is_dir()
    assert (archived / f"x-step{stopped:08d}.safetensors").read_bytes() == before[f"x-step{stopped:08d}.safetensors"]
    assert (archived / "x.toml").read_bytes() == before["x.toml"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000003"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()][:3] == [1, 2, 3]
    assert result.steps == 3

    # the first run's options and --resume auto: refused, it is not this folder's run any more, and its weights
    # never replace this run's LoRA
    trained = (out / "x.safetensors").read_bytes()
    with pytest.raises(LowvramError, match="--rank 8 there, 4 here"):
        train(run_config(output=str(out), max_steps=40, checkpoint_every=1, resume="auto", overwrite=True))
    assert (out / "x.safetensors").read_bytes() == trained


def test_resume_refuses_a_checkpoint_of_another_run_naming_the_difference(tmp_path):
    first = run_config(output=str(tmp_path / "a"), max_steps=2, checkpoint_every=1)
    train(first)
    found = checkpoint_folders.latest(tmp_path / "a" / "checkpoints")
    other = run_config(output=str(tmp_path / "b"), max_steps=4, lora_layers="attn-mlp", resume=str(found))
    with pytest.raises(LowvramError, match="--resume: .* is a checkpoint of another run \\(--lora-layers attn there, "
                                           "attn-mlp here\\)"):
        train(other)
    (tmp_path / "no-images").mkdir()  # refused before the data is scanned and cached, and the model loads
    elsewhere = run_config(output=str(tmp_path / "b"), data=str(tmp_path / "no-images"), resume=str(found))
    with pytest.raises(LowvramError, match="is a checkpoint of another run \\(--data"):
        train(elsewhere)
    same = run_config(output=str(tmp_path / "c"), max_steps=4, resume=str(found))  # more steps: the same run
    assert train(same).steps == 4


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    train(run_config(output=str(tmp_path / "a"), max_steps=1, checkpoint_every=1))
    root = tmp_path / "a" / "checkpoints"
    for step in (999_999, 1_000_000):  # "step-1000000" sorts before "step-999999" by name
        shutil.copytree(root / "step-000001", root / f"step-{step:06d}")
    assert checkpoint_folders.latest(root).name == "step-1000000"
    assert [step for step, _ in checkpoint_folders.complete(root)] == [1, 999_999, 1_000_000]


def test_keep_checkpoints_keeps_that_many_of_the_newest(tmp_path):
    train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=1, keep_checkpoints=2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000003", "step-000004"]


def cli_run(out, steps: int, *extra) -> list[str]:
    return [sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--output", str(out),
            "--max-steps", str(steps), "--rank", "4", "--checkpoint-every", "1", *extra]


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "x"
    first = Run(cli_run(out, 4000), env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and checkpoint_folders.latest(out / "checkpoints") is None:
            time.sleep(0.05)
        second = run(cli_run(out, 3, "--resume", "auto"), env)
        assert second.returncode != 0
        assert f"in use by another lowvram run (pid {first.pid}" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()  # SIGKILL: no chance to release the lock
        first.communicate(timeout=60)
    assert (out / LOCK).is_file() and (out / RECORD).is_file()
    done = checkpoint_folders.latest(out / "checkpoints").name
    resumed = run(cli_run(out, int(done[5:]) + 2, "--resume", "auto"), env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoints' / done}" in " ".join(resumed.stdout.split())
    assert load_file(str(out / "x.safetensors"))
    assert not (out / LOCK).exists()  # released at the end


def test_the_options_file_replays_the_recipe_without_this_runs_overwrite(tmp_path):
    from lowvram.configure import read_toml

    result = train(run_config(output=str(tmp_path), max_steps=1, overwrite=True))
    assert "overwrite" not in read_toml(result.config_path)  # a replay asks again before it replaces anything


def test_an_option_set_only_in_the_earlier_run_is_named_as_a_difference():
    from lowvram.train.identity import differences

    assert differences({"--rank": 4, "--seed": 3}, {"--rank": 4}) == "--seed 3 there, (not set) here"
    assert differences({"--rank": 4, "--ema-decay": 0.999}, {"--rank": 4}) == "--ema on there, off here"
    assert differences({"--ema-decay": 0.999}, {"--ema-decay": 0.9}) == "--ema-decay 0.999 there, 0.9 here"


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside_so_auto_follows_the_new_branch(tmp_path,
                                                                                                       capsys):
    train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2))
    earlier = tmp_path / "checkpoints" / "step-000002"
    train(run_config(output=str(tmp_path), max_steps=3, checkpoint_every=1, resume=str(earlier), lr=2e-4))
    assert [path.name for _, path in checkpoint_folders.complete(tmp_path / "checkpoints")][-1] == "step-000003"
    assert list((tmp_path / ARCHIVE).glob("*/step-000004"))  # the branch left, kept
    capsys.readouterr()
    train(run_config(output=str(tmp_path), max_steps=5, resume="auto", lr=2e-4))
    assert f"resumed from {tmp_path / 'checkpoints' / 'step-000003'} at step 3" in " ".join(
        capsys.readouterr().out.split())  # the new branch's, not the old step 4


def test_links_in_an_output_folder_from_elsewhere_are_replaced_never_written_through(tmp_path):
    """A folder unpacked from someone else's run may hold links named as lowvram's files: a new run writes files
    of its own there, and the files the links point to stay as they were."""
    victims = {name: tmp_path / f"victim-{name}" for name in ("metrics", "caption", "image")}
    for victim in victims.values():
        victim.write_text("the user's own data")
    out = tmp_path / "out"
    sample = out / "sample_data" / "5_lvshape"
    sample.mkdir(parents=True)
    (out / "metrics.jsonl").symlink_to(victims["metrics"])
    (sample / "00_red_circle.txt").symlink_to(victims["caption"])
    (sample / "00_red_circle.png").symlink_to(victims["image"])
    train(run_config(output=str(out), max_steps=1))  # --data sample: written into the folder
    assert all(victim.read_text() == "the user's own data" for victim in victims.values())
    for path in (out / "metrics.jsonl", sample / "00_red_circle.txt", sample / "00_red_circle.png"):
        assert path.is_file() and not path.is_symlink(), path


def test_a_file_replaced_keeps_its_permissions(tmp_path):
    from lowvram.files import write_text

    private = tmp_path / "private.toml"
    private.write_text("old")
    private.chmod(0o600)
    write_text(private, "new")
    assert private.read_text() == "new" and private.stat().st_mode & 0o777 == 0o600


def test_a_read_only_file_is_replaced_and_stays_read_only(tmp_path):
    """The permissions a replaced file keeps are set last: a read-only one set on the temporary file first left it
    unwritable to its own writer (root overrides that: its override is dropped here, as a user has none)."""
    target = tmp_path / "caption.txt"
    target.write_text("old")
    target.chmod(0o444)
    as_a_user = without_root_override()
    code = f"from pathlib import Path; from lowvram.files import write_text; write_text(Path({str(target)!r}), 'new')"
    done = subprocess.run([*as_a_user, sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o444


def test_an_output_under_a_folder_that_cannot_be_looked_into_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    locked.chmod(0)
    as_a_user = without_root_override()
    out = locked / "inner" / "run"
    try:
        done = subprocess.run([*as_a_user, sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data",
                               "sample", "--output", str(out)], capture_output=True, text=True, check=False)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"lowvram train: error: --output: can't write in {out}: Permission denied; choose "
                                   "an --output folder you can write to")


def test_a_model_moved_between_machines_is_said_and_another_of_its_name_refused(tmp_path, capsys):
    """A run moved from Colab to a PC resumed silently on whatever file had the model's name: one of other weights
    trained the rest of the run; a renamed one was refused with advice no one could follow."""
    from safetensors.torch import save_file

    from lowvram.cli import main
    from lowvram.models import load_model
    from lowvram.models.ldm_layout import sd15_single_file

    pipe = load_model("tiny").pipeline
    state = sd15_single_file(pipe.unet, pipe.vae, pipe.text_encoder)
    there, here = tmp_path / "colab" / "base.safetensors", tmp_path / "pc" / "base.safetensors"
    there.parent.mkdir()
    here.parent.mkdir()
    save_file(state, str(there))
    out = tmp_path / "run"

    def resume(model, steps):
        code = main(["train", "--model", str(model), "--data", "sample", "--output", str(out), "--max-steps",
                     str(steps), "--resume", "auto"])
        return code, capsys.readouterr()

    assert resume(there, 1)[0] == 0
    shutil.move(there, here)
    code, said = resume(here, 2)
    assert code == 0 and f"taken as moved: --model {there} there, {here} here" in " ".join(said.out.split())
    other = tmp_path / "other" / "base.safetensors"  # the same name, other weights
    other.parent.mkdir()
    save_file(state | {key: value + 1 for key, value in state.items() if key.startswith("model.diffusion_model.")},
              str(other))  # (a fine-tune of it: every U-Net weight other)
    here.rename(here.with_name("kept.safetensors"))  # (its path gone: 'other' would pass as it, moved)
    code, said = resume(other, 3)
    assert code == 2 and (f"--model: {other} is not the model the run in {out} trained on: its file differs from "
                          f"{here}'s, recorded when the run started (other weights, or the same saved again with "
                          "other metadata); give that file") in said.err, said.err
    code, said = resume(here.with_name("kept.safetensors"), 3)  # the same weights, renamed
    assert code == 2 and "a model or dataset moved here keeps its name (--model base.safetensors): name it so" in \
        " ".join(said.err.split()), said.err
    assert "--data" not in said.err.split("holds another run (")[1].split(")")[0]  # (only what differs is named)


def test_a_run_moved_from_windows_is_its_run_and_only_what_differs_is_named():
    """WSL resumed a run begun on Windows: its C:\\ paths never counted as moved, and a refusal named the model that
    had moved as though it differed."""
    from lowvram.train.identity import differences, same_run

    theirs = {"--model": "C:\\Users\\me\\models\\base.safetensors", "--data": "D:/training/data", "--rank": 8}
    ours = {"--model": "/mnt/c/Users/me/models/base.safetensors", "--data": "/home/me/data", "--rank": 8}
    assert same_run({"identity": "another", "recipe": theirs}, ours)
    assert differences(theirs, ours | {"--data": "/home/me/other"}) == (
        "--data D:/training/data there, /home/me/other here")


def test_a_run_that_loses_the_race_for_its_folder_is_refused_as_busy_too(tmp_path):
    """Runs started together each pass train's first look at the lock; the one whose folder the other took between
    that look and its own lock is refused as busy (exit 75, to try again later), as at the first look: it was a
    plain refusal, exit 2."""
    from accelerate import Accelerator

    from lowvram.errors import Busy
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run
    from lowvram.train.folder_lock import FolderLock
    from lowvram.train.outdir import claimed

    run = resolve_run(run_config(output=str(tmp_path / "run"), max_steps=1), NO_GPU)
    held = FolderLock(tmp_path / "run")  # (this process stands for the other run, which took it first)
    held.acquire()
    try:
        with pytest.raises(Busy, match=f"in use by another lowvram run \\(pid {os.getpid()}") as refused, \
                claimed(run, Accelerator(cpu=True), main=True):
            pass
    finally:
        held.release()
    assert refused.value.exit_code == 75


def test_a_folder_in_use_is_said_first_not_after_what_resume_auto_finds_there(tmp_path, capsys):
    from lowvram.train.folder_lock import FolderLock

    held = FolderLock(tmp_path / "run")  # this process stands for a run still caching (no checkpoint yet)
    held.acquire()
    try:
        with pytest.raises(LowvramError, match=f"in use by another lowvram run \\(pid {os.getpid()}"):
            train(run_config(output=str(tmp_path / "run"), max_steps=1, resume="auto",
                             cache_dir=str(tmp_path / "cache")))
    finally:
        held.release()
    assert "--resume auto" not in capsys.readouterr().out  # ("no checkpoint yet, so the run starts": it does not)
    assert not (tmp_path / "cache").exists()  # refused before caching the data
    # its LoRA there too: the command line's early check says the lock first, not "exists; ... --overwrite"
    from lowvram.cli import main

    (tmp_path / "run" / "run.safetensors").write_bytes(b"")
    held.acquire()
    try:
        # (exit 75, EX_TEMPFAIL: a loop of runs retries it later, and stops at an error, exit 2, to fix)
        assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "run")]) == 75
    finally:
        held.release()
    assert f"in use by another lowvram run (pid {os.getpid()}" in capsys.readouterr().err


def test_a_lock_another_machine_left_is_taken_over_once_its_run_stops_refreshing_it(tmp_path, monkeypatch):
    """A Colab runtime that disconnected left its lock on Drive; the reconnected one is another machine, whose
    process lookup cannot tell the run is gone: its resume was refused for good."""
    import time

    from lowvram.train import folder_lock

    lock = folder_lock.FolderLock(tmp_path / "run")
    lock.path.parent.mkdir()
    theirs = {"pid": 1, "host": "8f2c1a9b7d3e", "since": "2026-12-05T08:01:07+00:00"}
    old = time.time() - folder_lock.LOCK_STALE_S - 5
    lock.path.write_text(json.dumps(theirs))  # an earlier lowvram's, which never refreshed it: held
    os.utime(lock.path, (old, old))
    assert "in use by another lowvram run (pid 1 on 8f2c1a9b7d3e" in lock.held_by_another()
    assert "taken over" not in lock.held_by_another()  # (no promise it would not keep)
    lock.path.write_text(json.dumps(theirs | {"refreshed": True}))
    assert "in use by another lowvram run (pid 1 on 8f2c1a9b7d3e" in lock.held_by_another()
    os.utime(lock.path, (old, old))  # its run stopped refreshing it
    assert lock.held_by_another() is None
    lock.acquire()  # taken over
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.path.write_text(json.dumps(theirs | {"refreshed": True}))  # taken over in turn: its release leaves it
    lock.release()
    assert json.loads(lock.path.read_text())["pid"] == 1
    lock.path.unlink()
    monkeypatch.setattr(folder_lock, "LOCK_HEARTBEAT_S", 0.05)  # a live run refreshes its own
    lock.acquire()
    try:
        os.utime(lock.path, (old, old))
        time.sleep(0.5)
        assert time.time() - lock.path.stat().st_mtime < 5
    finally:
        lock.release()


def test_a_run_waits_while_another_machines_unrefreshed_lock_goes_stale(tmp_path, monkeypatch, capsys):
    """A Colab notebook run again right after a reconnect: the gone runtime's lock was minutes from stale, and
    the training cell was refused ("choose another --output", which starts over). It waits, and goes on; a lock
    refreshed meanwhile (its run goes on) is refused as before."""
    import threading
    import time

    from lowvram.train import folder_lock

    monkeypatch.setattr(folder_lock, "LOCK_POLL_S", 0.2)
    lock = folder_lock.FolderLock(tmp_path / "run")
    lock.path.parent.mkdir()
    lock.path.write_text(json.dumps({"pid": 1, "host": "colab-old-vm", "since": "2026-12-05T08:01:07+00:00",
                                     "refreshed": True}))
    touched = time.time() - folder_lock.LOCK_STALE_S + 2  # stale in 2 s
    os.utime(lock.path, (touched, touched))
    started = time.monotonic()
    train(run_config(output=str(tmp_path / "run"), max_steps=1, cache_dir=str(tmp_path / "cache")))
    assert time.monotonic() - started >= 1.5
    said = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"{re.escape(str(tmp_path / 'run'))} is locked by a run on colab-old-vm, which last refreshed "
                     r"the lock 17\d s ago \(a run going on does so every 30 s\): waiting up to [12] s for it to go "
                     "stale", said), said
    lock.path.write_text(json.dumps({"pid": 1, "host": "colab-old-vm", "since": "2026-12-05T08:01:07+00:00",
                                     "refreshed": True}))
    os.utime(lock.path, (touched + 10, touched + 10))  # (a run on it goes on: it refreshes the lock in a moment)
    refresher = threading.Timer(0.5, os.utime, (lock.path,))
    refresher.start()
    started = time.monotonic()
    with pytest.raises(LowvramError, match="is in use by another lowvram run \\(pid 1 on colab-old-vm"):
        train(run_config(output=str(tmp_path / "run"), max_steps=2, cache_dir=str(tmp_path / "cache"),
                         resume="auto"))
    assert time.monotonic() - started < 8  # as soon as it is refreshed: not after the 12 s it had to go stale
    refresher.join()
    # the command line too (the notebook's cell): its early look at the folder left the lock to the run, which waits
    from lowvram.cli import main

    fresh = folder_lock.FolderLock(tmp_path / "again")
    fresh.path.parent.mkdir()
    fresh.path.write_text(json.dumps({"pid": 1, "host": "colab-old-vm", "since": "2026-12-05T08:01:07+00:00",
                                      "refreshed": True}))
    os.utime(fresh.path, (time.time() - folder_lock.LOCK_STALE_S + 2,) * 2)
    (tmp_path / "again" / "again.safetensors").write_bytes(b"")  # (its LoRA, unrecorded: said after the wait)
    capsys.readouterr()
    assert main(["train", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--output",
                 str(tmp_path / "again"), "--cache-dir", str(tmp_path / "cache")]) == 2
    said = " ".join("".join(capsys.readouterr()).split())
    assert "waiting up to" in said and "again.safetensors exists" in said, said


def test_a_dataset_given_through_dotdot_is_the_same_dataset_by_its_full_path(tmp_path, monkeypatch):
    """`--data ../d1` from a project folder, then `--data d1` from above it: 'another run (--data /x/proj/../d1
    there, /x/d1 here)'. Runs that recorded the `..` still count as the same."""
    from lowvram.train.identity import differences, same_run

    (tmp_path / "proj").mkdir()
    (tmp_path / "d1").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    via_dotdot = run_config(data="../d1", model="tiny")
    monkeypatch.chdir(tmp_path)
    direct = run_config(data="d1", model="tiny")
    assert via_dotdot.data.data == direct.data.data == str(tmp_path / "d1")
    (tmp_path / "deep" / "sub").mkdir(parents=True)  # past a link, .. is its target's parent: kept as given
    (tmp_path / "deep" / "d2").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "deep" / "sub")
    assert run_config(data="link/../d2", model="tiny").data.data == str(tmp_path / "link" / ".." / "d2")
    recorded = {"--data": str(tmp_path / "proj" / ".." / "d1"), "--rank": 4}
    assert same_run({"identity": "earlier", "recipe": recorded}, {"--data": direct.data.data, "--rank": 4})
    assert differences(recorded, {"--data": direct.data.data, "--rank": 8}) == "--rank 4 there, 8 here"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX's")
def test_a_run_whose_terminal_hangs_up_saves_a_checkpoint_and_resumes(tmp_path):
    """The ssh connection drops mid-run: SIGHUP's default killed it at once, and what it printed next to the
    terminal that was gone would have failed (EIO). It stops as for Ctrl-C, with its checkpoint, though the hang-up
    comes twice (bash passes it on to its jobs, the kernel sends it again as bash exits: taken as a second Ctrl-C,
    it stopped at once and kept nothing)."""
    import pty

    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "x"
    terminal, its_side = pty.openpty()
    started = subprocess.Popen(hangs_up(cli_run(out, 4000, "--checkpoint-every", "1000")), env=env, stdin=its_side,
                               stdout=its_side, stderr=its_side, start_new_session=True)
    os.close(its_side)
    reader = threading.Thread(target=lambda: _drain(terminal), daemon=True)  # (a full pty would block its writes)
    reader.start()
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(0.05)
        assert (out / "metrics.jsonl").is_file()
        time.sleep(1)
    finally:
        os.close(terminal)  # the terminal is gone, then the hang-up comes
        started.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        started.send_signal(signal.SIGHUP)
        returncode = started.wait(timeout=120)
    assert returncode == 130
    done = checkpoint_folders.latest(out / "checkpoints")
    assert done is not None and 1 <= int(done.name[5:]) < 4000
    resumed = run(cli_run(out, int(done.name[5:]) + 1, "--checkpoint-every", "1000", "--resume", "auto"), env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {done}" in " ".join(resumed.stdout.split())


def hangs_up(argv: list[str]) -> list[str]:
    """`python -m lowvram ...` with SIGHUP at its default, whatever this process has (a suite run under nohup
    passes its SIG_IGN down, and a run started so trains on, as it should)."""
    start = ("import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
             "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    return [argv[0], "-c", start, *argv[1:]]


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("nohup"), reason="nohup is POSIX's")
def test_a_run_under_nohup_trains_on_when_its_terminal_hangs_up_and_keeps_its_log(tmp_path):
    """nohup ignores SIGHUP: a run it starts must go on, its log file still written (the hang-up handler stopped it
    and sent the rest of its output to /dev/null)."""
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")}
    out, log = tmp_path / "x", tmp_path / "run.log"
    with open(log, "w") as written:
        started = subprocess.Popen(["nohup", *cli_run(out, 8, "--checkpoint-every", "100")], env=env, stdout=written,
                                   stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(0.05)
        started.send_signal(signal.SIGHUP)
        assert started.wait(timeout=300) == 0
    assert (out / "x.safetensors").is_file() and f"saved {out / 'x.safetensors'}" in " ".join(log.read_text().split())
    with open(log, "w") as written:  # without nohup (a shell that exits hangs up its jobs): it stops, said in its log
        started = subprocess.Popen(hangs_up(cli_run(tmp_path / "y", 4000, "--checkpoint-every", "1000")), env=env,
                                   stdout=written, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline and not (tmp_path / "y" / "metrics.jsonl").is_file():
            time.sleep(0.05)
        started.send_signal(signal.SIGHUP)
        assert started.wait(timeout=300) == 130
    assert "interrupted at step" in log.read_text()


def test_a_lock_left_in_a_folder_gone_read_only_is_no_second_error(tmp_path, monkeypatch):
    """A run's folder made read-only under it (a Drive unmounted): its one-line error was followed by a traceback
    from removing its lock, which the next run takes over as its dead pid's."""
    from pathlib import Path

    from lowvram.train import folder_lock

    lock = folder_lock.FolderLock(tmp_path / "run")
    lock.acquire()
    unlink = Path.unlink

    def read_only(path, *args, **kwargs):
        if path == lock.path:
            raise PermissionError(30, "Read-only file system")
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", read_only)
    lock.release()
    assert not lock.held and lock.path.exists()


def test_the_folder_suggested_for_another_name_is_neither_this_folder_nor_inside_models(tmp_path):
    """kohya_ss's one output_dir for every output_name: the suggestion was the folder itself for a run named as the
    folder, and models/<name> (models/vae, say) for a folder in ComfyUI's LoRA list."""
    loras = tmp_path / "ComfyUI" / "models" / "loras"
    train(run_config(output=str(loras), max_steps=1, name="first"))
    with pytest.raises(LowvramError) as refused:
        train(run_config(output=str(loras), max_steps=1, name="vae", overwrite=False))
    assert f"--output {tmp_path / 'ComfyUI' / 'lowvram-runs' / 'vae'} --copy-to {loras}" in str(refused.value)
    # --overwrite, refused in a LoRA list, is not offered (it was, and then refused)
    assert str(refused.value).endswith("start over by moving its files out of this LoRA folder first")
    with pytest.raises(LowvramError, match="--overwrite: .* is a LoRA folder"):
        train(run_config(output=str(loras), max_steps=1, name="vae", overwrite=True))
    with pytest.raises(LowvramError) as refused:
        train(run_config(output=str(loras), max_steps=1, name="loras", overwrite=False))
    assert f"--output {tmp_path / 'ComfyUI' / 'lowvram-runs' / 'loras'} --copy-to" in str(refused.value)
    plain = tmp_path / "out"
    train(run_config(output=str(plain), max_steps=1, name="a"))
    with pytest.raises(LowvramError) as refused:
        train(run_config(output=str(plain), max_steps=1, name="out", overwrite=False))
    assert f"--output {tmp_path / 'out_run'} --copy-to {plain}" in str(refused.value)
    assert f"start over with --overwrite (its files move to {plain / 'archive'}/)" in str(refused.value)


def test_a_lora_named_after_a_folder_called_output_says_how_to_name_it(tmp_path, capsys):
    """The kohya Colab notebooks' Loras/<project>/output: every project's LoRA was output.safetensors, unsaid."""
    from lowvram.cli import main

    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "mychar" / "output"),
                 "--max-steps", "1"]) == 0
    note = ("note: the LoRA is named output.safetensors, after its folder; --name NAME names it (ComfyUI and "
            "AUTOMATIC1111 list LoRAs by file name)")
    assert note in " ".join(capsys.readouterr().out.split())
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "mychar" / "output"),
                 "--name", "mychar", "--max-steps", "1", "--overwrite"]) == 0
    assert "after its folder" not in capsys.readouterr().out


def test_a_resumed_runs_toml_writes_its_numbers_as_a_fresh_one_does(tmp_path):
    """decay_steps = 0 in a fresh run's .toml became 0.0 once resumed: a diff of the two showed a change that was
    none."""
    from lowvram.cli import main

    out = tmp_path / "out"
    assert main(["train", "--preset", "style", "--model", "tiny", "--data", "sample", "--output", str(out),
                 "--max-steps", "1", "--checkpoint-every", "1"]) == 0
    fresh = (out / "out.toml").read_text()
    assert main(["train", "--config", str(out / "out.toml"), "--max-steps", "2", "--resume", "auto"]) == 0
    resumed = (out / "out.toml").read_text()
    assert [line for line in fresh.splitlines() if "_steps" in line and "max" not in line] == [
        line for line in resumed.splitlines() if "_steps" in line and "max" not in line]
