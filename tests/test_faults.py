"""Real faults, not simulated ones: a filesystem that fills up (a small tmpfs where this machine may mount one, a
file-size limit on the training process otherwise), SIGKILL at random moments, a corrupt newest checkpoint, and
temporary files a killed writer left. After each: every file in the output is complete and loadable or absent,
no temporary file survives the next run, and resuming ends with the LoRA an uninterrupted run writes."""

import contextlib
import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from preloaded import Run, run
from safetensors.torch import load_file

from lowvram.files import TEMPORARY
from lowvram.train import checkpoint_folders

pytestmark = pytest.mark.slow  # real processes killed and resumed, real filesystems filled: minutes
STEPS = 12


def cli(out: Path, data: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", str(data), "--output", str(out),
            "--max-steps", str(STEPS), "--rank", "4", "--lr", "1e-3", "--seed", "3", "--checkpoint-every", "1",
            "--keep-checkpoints", "100", *extra]


@pytest.fixture
def env(tmp_path) -> dict:
    return {**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sample_data_module) -> dict:
    """The LoRA of an uninterrupted run, and the cache it filled (later runs read the same latents from it)."""
    root = tmp_path_factory.mktemp("whole")
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    done = run(cli(root / "out", sample_data_module), env)
    assert done.returncode == 0, done.stderr
    return {"lora": load_file(str(root / "out" / "out.safetensors")), "cache": root / "cache",
            "sizes": {p.name: p.stat().st_size for p in (root / "out").rglob("*") if p.is_file()}}


@pytest.fixture(scope="module")
def sample_data_module(tmp_path_factory) -> Path:
    from lowvram.data.sample import write_sample_dataset

    return write_sample_dataset(tmp_path_factory.mktemp("data") / "data")


def cached_env(uninterrupted) -> dict:
    return {**os.environ, "LOWVRAM_CACHE_DIR": str(uninterrupted["cache"]), "HF_HUB_OFFLINE": "1"}


def assert_output_sound(out: Path) -> None:
    """Every file complete and loadable, or absent: no temporary file, no half-written checkpoint."""
    leftovers = [p for p in out.rglob("*") if TEMPORARY.match(p.name) or p.name.startswith(".step-")]
    assert not leftovers, leftovers
    for path in out.rglob("*.safetensors"):
        load_file(str(path))
    for _, folder in checkpoint_folders.complete(out / "checkpoints"):
        assert checkpoint_folders.problem(folder) is None, folder


def assert_same_lora(path: Path, expected: dict) -> None:
    got = load_file(str(path))
    assert got.keys() == expected.keys()
    for key in got:
        assert torch.equal(got[key], expected[key]), key


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a chosen size (a tmpfs, where this machine lets the tests mount one), and a way to
    grow it, as a user frees space."""
    mounted = []

    def mount(name: str, kib: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the file-size-limit tests still run")
        mounted.append(folder)
        return folder

    def grow(folder: Path, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(folder)], check=True)

    yield mount, grow
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_disk_that_fills_up_at_a_checkpoint_stops_the_run_in_one_line_and_resume_finishes_it(
        uninterrupted, sample_data_module, small_disk):
    mount, grow = small_disk
    checkpoint_kib = uninterrupted["sizes"]["optimizer.safetensors"] // 1024 * 3 + 64
    out = mount("out", 1024 + 5 * checkpoint_kib + 100)  # about five checkpoints beside the 1 MiB kept spare
    (out / "archive" / "20261201-101010").mkdir(parents=True)  # an earlier branch's files: what can go, named
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(25 * 1024)}, str(out / "archive" / "20261201-101010" / "out-step00000004.safetensors"))
    env = cached_env(uninterrupted)
    failed = run(cli(out, sample_data_module), env)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip()
    assert len(line.splitlines()) == 1 and "no room for checkpoint step-" in line and f"in {out / 'checkpoints'}" in line
    assert re.search(rf"10\d KiB of earlier runs' and branches' files in {re.escape(str(out))}/archive/, which can "
                     "go", line), line
    kept = checkpoint_folders.latest(out / "checkpoints")
    assert kept is not None and f"kept: checkpoint {kept.name}" in line and "--resume auto" in line
    assert_output_sound(out)

    grow(out, 64 * 1024)  # the user frees space
    resumed = run(cli(out, sample_data_module, "--resume", "auto"), env)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_lora(out / "out.safetensors", uninterrupted["lora"])
    assert_output_sound(out)


def test_a_disk_with_room_for_the_lora_but_not_the_last_checkpoint_keeps_the_lora(
        uninterrupted, sample_data_module, small_disk):
    """The LoRA is written before the end's checkpoint: the file the user trained for is the one a full disk
    keeps, and the run did its work (exit 0, metrics.jsonl's end "finished": it was 2 and "failed", which a script
    retrying until 0 took for a run to rerun); the checkpoint's lack is a warning."""
    mount, grow = small_disk
    lora_kib = uninterrupted["sizes"]["out.safetensors"] // 1024
    checkpoint_kib = uninterrupted["sizes"]["optimizer.safetensors"] // 1024
    assert checkpoint_kib > lora_kib + 40
    out = mount("out", 1024 + lora_kib + 40)  # the 1 MiB kept spare and the LoRA, not its checkpoint
    argv = cli(out, sample_data_module)[:-4]  # no --checkpoint-every: the end's
    done = run(argv, cached_env(uninterrupted))
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert "warning: no room for checkpoint step-" in said, said
    assert (f"{out / 'out.safetensors'}, the run's end, is whole, but has no checkpoint to --resume from; to train it "
            f"on, free space, then train on from it with --network-weights {out / 'out.safetensors'} and another "
            "--output") in said
    end = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["end"] == "finished" and end["lora"] == str(out / "out.safetensors") and end["missing"] == ["checkpoint"]
    assert_same_lora(out / "out.safetensors", uninterrupted["lora"])
    assert_output_sound(out)
    grow(out, 64 * 1024)
    again = run(argv, cached_env(uninterrupted))  # the same command again: the way on named, not --resume auto
    assert again.returncode == 2 and "its run has no checkpoint there (removed, or lost to a full disk or a kill " \
        f"while saving it): train on from it with --network-weights {out / 'out.safetensors'} and another --output" in again.stderr, again.stderr
    onward = run([*cli(out.parent / "onward", sample_data_module)[:-4], "--network-weights",
                  str(out / "out.safetensors")], cached_env(uninterrupted))
    assert onward.returncode == 0, onward.stderr


def test_a_disk_without_room_for_the_last_checkpoint_after_an_earlier_one_says_the_lora_is_whole(
        uninterrupted, sample_data_module, small_disk):
    """It said to continue with --resume auto, which trained the last steps again from the earlier checkpoint and
    set the finished LoRA aside as a branch left."""
    mount, grow = small_disk
    lora_kib = uninterrupted["sizes"]["out.safetensors"] // 1024
    checkpoint_kib = sum(uninterrupted["sizes"][name] for name in ("adapters.safetensors", "optimizer.safetensors",
                                                                    "rng.safetensors", "state.json")) // 1024
    out = mount("out", 1024 + int(1.5 * checkpoint_kib) + lora_kib)  # one checkpoint, the LoRA; not a second
    done = run([*cli(out, sample_data_module)[:-4], "--checkpoint-every", str(STEPS // 2)], cached_env(uninterrupted))
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert (f"no room for checkpoint step-{STEPS:06d}" in said and f"{out / 'out.safetensors'}, the run's end, is "
            "whole, but has no checkpoint to --resume from; to train it on, free space, then train on from it") in said
    assert_same_lora(out / "out.safetensors", uninterrupted["lora"])
    grow(out, 64 * 1024)  # --resume auto anyway: it trained the last steps again and kept the LoRA twice
    again = run([*cli(out, sample_data_module)[:-4], "--checkpoint-every", str(STEPS // 2), "--resume", "auto"],
                cached_env(uninterrupted))
    assert again.returncode == 2 and (
        f"--resume auto: {out / 'out.safetensors'} is the run's end, step {STEPS}, written after its newest "
        f"checkpoint, step {STEPS // 2}") in again.stderr, again.stderr
    assert f"--resume {out / 'checkpoints' / f'step-{STEPS // 2:06d}'}" in again.stderr
    assert sorted(path.name for path in out.glob("*.safetensors")) == ["out.safetensors"]
    assert_same_lora(out / "out.safetensors", uninterrupted["lora"])


def test_checkpoints_a_save_prunes_go_first_where_the_disk_has_no_room_for_it_beside_them(
        uninterrupted, sample_data_module, small_disk):
    """--keep-checkpoints 2 on a drive with room for two: the third was refused for want of the room the second
    oldest, pruned after it, held (a quota-full Drive: each retry stopped at the same checkpoint)."""
    mount, _ = small_disk
    lora_kib = uninterrupted["sizes"]["out.safetensors"] // 1024
    checkpoint_kib = sum(uninterrupted["sizes"][name] for name in ("adapters.safetensors", "optimizer.safetensors",
                                                                    "rng.safetensors", "state.json")) // 1024
    out = mount("out", 1024 + int(2.5 * checkpoint_kib) + lora_kib + 64)  # two checkpoints and the LoRA, not three
    done = run([*cli(out, sample_data_module)[:-4], "--checkpoint-every", str(STEPS // 4), "--keep-checkpoints", "2"],
               cached_env(uninterrupted))
    assert done.returncode == 0, done.stderr
    assert [path.name for _, path in checkpoint_folders.complete(out / "checkpoints")] == [
        f"step-{STEPS * 3 // 4:06d}", f"step-{STEPS:06d}"]
    assert_same_lora(out / "out.safetensors", uninterrupted["lora"])
    assert_output_sound(out)


def test_ctrl_c_on_a_disk_with_room_for_the_lora_but_not_the_checkpoint_keeps_the_lora(
        uninterrupted, sample_data_module, small_disk):
    """The interrupted run's save wrote its checkpoint first, which did not fit, and so no LoRA either."""
    mount, _ = small_disk
    lora_kib = uninterrupted["sizes"]["out.safetensors"] // 1024
    out = mount("out", 1024 + lora_kib + 40)
    argv = [*cli(out, sample_data_module)[:-4], "--max-steps", "100000"]  # no checkpoint before the stop
    proc = Run(argv, cached_env(uninterrupted))
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "no room for checkpoint step-" in err and "kept: no checkpoint yet, LoRA out-step" in err, err
    [kept] = out.glob("out-step*.safetensors")
    load_file(str(kept))  # whole
    assert_output_sound(out)


def test_a_cache_folder_without_room_falls_back_to_memory_for_the_run(tmp_path, sample_data_module, small_disk):
    mount, _ = small_disk
    cache = mount("cache", 1024)  # room for the 1 MiB kept spare, not for the entries
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    done = run(cli(tmp_path / "out", sample_data_module, "--max-steps", "2"), env)
    assert done.returncode == 0, done.stderr
    printed = " ".join(done.stdout.split())
    assert "encoding into memory for this run" in printed
    # said before the caching it changes (after it, minutes of "caching latents" read as written to disk)
    assert printed.index("encoding into memory for this run") < printed.index("caching latents"), printed
    assert printed.count("encoding into memory for this run") == 1
    assert load_file(str(tmp_path / "out" / "out.safetensors"))


def test_a_file_size_limit_at_the_final_save_keeps_the_checkpoint_and_resume_writes_the_lora(
        uninterrupted, sample_data_module, tmp_path):
    """The write itself fails (EFBIG, as a disk that fills up meanwhile fails with ENOSPC), not the check before
    it: with Lion's one moment and an fp32 LoRA with its metadata, only the final LoRA is larger than the limit
    (the sizes come from a run without the limit)."""
    env, options = cached_env(uninterrupted), ("--optimizer", "lion", "--save-precision", "fp32")
    sized = run(cli(tmp_path / "sized", sample_data_module, *options), env)
    assert sized.returncode == 0, sized.stderr
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "sized").rglob("*") if p.is_file()}
    lora_size = sizes.pop("sized.safetensors")
    assert max(sizes.values()) < lora_size - 1024, (lora_size, sizes)
    out = tmp_path / "out"
    failed = run(cli(out, sample_data_module, *options), env, limit_bytes=lora_size - 512)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip()
    assert len(line.splitlines()) == 1 and "file-size limit" in line and f"kept: checkpoint step-{STEPS:06d}" in line
    assert not (out / "out.safetensors").exists()
    assert_output_sound(out)
    resumed = run(cli(out, sample_data_module, *options, "--resume", "auto"), env)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_lora(out / "out.safetensors", load_file(str(tmp_path / "sized" / "sized.safetensors")))


def test_a_file_size_limit_on_the_metrics_stops_the_run_in_one_line(uninterrupted, sample_data_module, tmp_path):
    """The log line a full disk refuses stays in the file's buffer: closing the log must not raise it again over the
    one-line message."""
    sizes = uninterrupted["sizes"]
    limit = max(sizes["out.toml"], sizes["lowvram-run.json"]) + 64
    assert sizes["metrics.jsonl"] / STEPS * 40 > limit + 1024  # 40 steps' lines pass the limit
    argv = [*cli(tmp_path / "out", sample_data_module)[:-4], "--max-steps", "40"]  # no checkpoints
    failed = run(argv, cached_env(uninterrupted), limit_bytes=limit)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip()
    assert len(line.splitlines()) == 1 and "metrics.jsonl" in line and "file-size limit" in line, line
    assert "raise the limit (ulimit -f unlimited) or write elsewhere, then run the same command again" in line


def test_sigkill_at_twenty_random_moments_then_resume_ends_with_the_uninterrupted_lora(
        uninterrupted, sample_data_module, tmp_path):
    """Twenty SIGKILLs: two at a random moment of the start (scan, model, cache; at its first step where the start
    is over sooner: a plain sleep let them take 64 of the 100 steps on a fast machine), the rest a random fraction
    of a second after a step was logged, so they land in steps and in the checkpoint and LoRA saves around them.
    After each, the next run resumes; the last one ends with the LoRA of a run never killed."""
    env, steps = cached_env(uninterrupted), "100"  # more than twenty kills can reach
    whole = run(cli(tmp_path / "whole", sample_data_module, "--max-steps", steps), env)
    assert whole.returncode == 0, whole.stderr
    out, metrics = tmp_path / "out", tmp_path / "out" / "metrics.jsonl"
    moments = random.Random(20261130)
    argv, kills, landed = cli(out, sample_data_module, "--max-steps", steps, "--save-every", "3"), 0, []
    while kills < 20:
        before = logged_steps(metrics)
        proc = Run(argv, env)
        if kills < 2:
            deadline = time.time() + moments.uniform(0.5, 4.0)
            while proc.poll() is None and logged_steps(metrics) <= before and time.time() < deadline:
                time.sleep(0.01)
        else:
            deadline = time.time() + 120
            while proc.poll() is None and logged_steps(metrics) <= before and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(moments.uniform(0.0, 0.25))
        if proc.poll() is not None:  # it finished first
            assert proc.returncode == 0, proc.communicate()[1]
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        kills, landed = kills + 1, [*landed, logged_steps(metrics)]
        assert_loadable_or_absent(out)
        if checkpoint_folders.latest(out / "checkpoints") is not None:
            argv = cli(out, sample_data_module, "--max-steps", steps, "--save-every", "3", "--resume", "auto")
    assert kills == 20 and len(set(landed)) >= 10, landed  # at many different points of the run
    if not (out / "out.safetensors").exists():
        done = run(argv, env)
        assert done.returncode == 0, done.stderr
    assert_same_lora(out / "out.safetensors", load_file(str(tmp_path / "whole" / "whole.safetensors")))
    assert_output_sound(out)  # the runs after the kills removed what the kills left


def logged_steps(metrics: Path) -> int:
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def assert_loadable_or_absent(out: Path) -> None:
    """Right after a kill: temporary files may remain (the next run removes them); finished files are whole."""
    for path in out.rglob("*.safetensors"):
        if not TEMPORARY.match(path.name):
            load_file(str(path))
    for _, folder in checkpoint_folders.complete(out / "checkpoints"):
        assert checkpoint_folders.problem(folder) is None, folder


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before_and_says_so(uninterrupted, sample_data_module,
                                                                             tmp_path):
    out, env = tmp_path / "out", cached_env(uninterrupted)
    done = run(cli(out, sample_data_module, "--max-steps", "4"), env)
    assert done.returncode == 0, done.stderr
    root = out / "checkpoints"
    adapters = root / "step-000004" / "adapters.safetensors"
    adapters.write_bytes(adapters.read_bytes()[: adapters.stat().st_size // 2])  # truncated
    (root / "step-000003" / "optimizer.safetensors").unlink()  # a missing part
    resumed = run(cli(out, sample_data_module, "--max-steps", "6", "--resume", "auto", "--overwrite"), env)
    assert resumed.returncode == 0, resumed.stderr
    printed = " ".join(resumed.stdout.split())
    assert "step-000004 is unreadable" in printed and "step-000003 is unreadable" in printed
    assert f"resumed from {root / 'step-000002'} at step 2" in printed
    for _, folder in checkpoint_folders.complete(root):
        assert checkpoint_folders.problem(folder) is None, folder  # (kept, the broken ones took the good ones' place
    # as checkpoints were pruned): set aside with the branch left
    assert {path.name for path in out.glob("archive/*/step-*")} == {"step-000003", "step-000004"}
    with pytest.raises(AssertionError):
        assert_same_lora(out / "out.safetensors", {})  # it trained on (steps 3 to 6), it did not start over
    assert len([line for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]) == 6


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_run(uninterrupted, sample_data_module,
                                                                        tmp_path):
    """A writer SIGKILLed in the middle of atomic_write leaves its temporary file; the next run in that folder
    removes it, and nothing else (a user's own dotfile stays)."""
    out, env = tmp_path / "out", cached_env(uninterrupted)
    out.mkdir()
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\nfrom pathlib import Path\nfrom lowvram.files import atomic_write\n"
        "def half(tmp):\n    tmp.write_bytes(b'x' * 1000)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(Path(sys.argv[1]) / 'out-step00000001.safetensors', half)\n"), str(out)],
        capture_output=True, text=True, check=False)
    assert killed.returncode == -signal.SIGKILL
    [orphan] = [p for p in out.iterdir() if TEMPORARY.match(p.name)]
    (out / ".my-notes.tmp").write_text("mine")
    done = run(cli(out, sample_data_module, "--max-steps", "1"), env)
    assert done.returncode == 0, done.stderr
    assert not orphan.exists() and (out / ".my-notes.tmp").read_text() == "mine"
    assert "removed 1 temporary file" in " ".join(done.stdout.split())


def test_a_file_size_limit_while_merging_into_a_model_leaves_nothing_and_says_so(tmp_path, env):
    """`lowvram merge --model` under a file-size limit smaller than the model: a single file and a diffusers
    folder each stop in one line naming the limit, and nothing is left at --output or beside it."""
    from safetensors.torch import save_file

    from lowvram.models import load_model
    from lowvram.models.ldm_layout import sd15_single_file

    model = load_model("tiny")
    checkpoint = tmp_path / "base.safetensors"
    save_file(sd15_single_file(model.unet, model.vae, model.pipeline.text_encoder), str(checkpoint))
    trained = run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--output",
                   str(tmp_path / "lora"), "--max-steps", "1"], env)
    assert trained.returncode == 0, trained.stderr
    lora = tmp_path / "lora" / "lora.safetensors"
    for output in (tmp_path / "merged.safetensors", tmp_path / "merged"):
        failed = run([sys.executable, "-m", "lowvram", "merge", str(lora), "--model", str(checkpoint), "--output",
                      str(output)], env, limit_bytes=checkpoint.stat().st_size // 4)
        assert failed.returncode == 2, failed.stderr
        line = failed.stderr.strip()
        assert len(line.splitlines()) == 1 and "file-size limit" in line and "the merged model" in line, line
        assert sorted(path.name for path in tmp_path.iterdir()) == ["base.safetensors", "cache", "lora"]


def test_a_read_only_output_folder_is_refused_before_any_model_library_loads(tmp_path, small_disk):
    mount, _ = small_disk
    folder = mount("readonly", 1024)
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    probe = ("import sys; from lowvram.cli import main; "
             f"code = main(['train', '--model', 'tiny', '--data', 'sample', '--output', {str(folder / 'run')!r}]); "
             "print(code, 'diffusers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert done.stderr.strip() == (f"lowvram train: error: --output: can't write in {folder / 'run'}: {folder} is on "
                                   "a read-only file system; choose an --output folder you can write to")


def test_a_full_disk_at_the_first_write_of_a_run_is_one_line_and_leaves_no_lock(tmp_path, small_disk):
    """The command a user runs right after the disk filled: its lock file's write ended in a traceback, exit 1."""
    mount, _ = small_disk
    folder = mount("full", 256)
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as fh:  # (filled to the last block)
        while True:
            fh.write(b"\0" * 4096)
    done = run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--output",
                str(folder / "run"), "--max-steps", "1", "--cache-dir", str(tmp_path / "cache")], os.environ.copy())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"lowvram train: error: --output: can't write {folder / 'run' / '.lowvram.lock'} (No space left on device); "
        f"free space in {folder / 'run'}, or choose another --output")
    assert not (folder / "run" / ".lowvram.lock").exists()


def test_a_cache_folder_short_of_room_says_how_much_to_free_and_that_is_enough(tmp_path, sample_data_module,
                                                                               small_disk):
    """The room a cache needs counts the MiB every write leaves free: a folder with the entries' room but not that
    one was let through, then refused every entry."""
    mount, grow = small_disk
    cache = mount("cache", 1024 + 64)  # room for the entries (about 115 KiB with their margin), not the MiB too
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    short = run(cli(tmp_path / "short", sample_data_module, "--max-steps", "1"), env)
    assert short.returncode == 0, short.stderr
    printed = " ".join(short.stdout.split())
    assert "no room for a cache entry" not in printed and "encoding into memory for this run" in printed
    more = re.search(r"free ([\d.]+) KiB more or pass another --cache-dir", printed)
    assert more, printed
    grow(cache, 1024 + 64 + math.ceil(float(more.group(1))))
    enough = run(cli(tmp_path / "enough", sample_data_module, "--max-steps", "1"), env)
    assert enough.returncode == 0, enough.stderr
    assert "encoding into memory" not in " ".join(enough.stdout.split()), (printed, enough.stdout)
    assert any((cache / "latents").rglob("*"))


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_disk_that_fills_with_the_final_samples_log_says_so_where_they_are_logged(tmp_path, small_disk):
    """TensorBoard's writer thread meets a full disk: the error comes out where the final samples are logged, as
    the run's DiskFull (said in one line, the LoRA written), with no thread traceback, and the log's close after it
    is quiet; it came out at the close, a traceback after a finished run."""
    import numpy as np
    from conftest import run_config
    from PIL import Image

    from lowvram.files import DiskFull
    from lowvram.train.runlog import RunLog

    mount, _ = small_disk
    out = mount("out", 256)
    config = run_config(output=str(out), tensorboard=True)
    sample = tmp_path / "sample.png"  # noise: its PNG (and its event) larger than the disk
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(sample)
    with RunLog(out, 0, config) as log:
        with pytest.raises(DiskFull) as error:
            log.final_samples(3, [sample])
        assert str(error.value) == (f"no room for the TensorBoard log in {out / 'logs'}: it needs 1.00 MiB, 0 B is "
                                    "free; free space there, or write elsewhere")


def test_a_small_file_on_a_full_disk_says_the_room_it_needs_is_what_is_kept_free(small_disk):
    """A teacher's full quota: 'no room for lowvram-run.json: it needs 1.00 MiB' read as wrong for a file of bytes."""
    from lowvram.files import DiskFull, atomic_write

    mount, _ = small_disk
    out = mount("out", 512)
    with pytest.raises(DiskFull) as error:
        atomic_write(out / "lowvram-run.json", lambda tmp: tmp.write_text("{}"), 2)
    assert str(error.value).startswith(f"no room for lowvram-run.json in {out}: it needs 1.00 MiB with the 1.00 MiB "
                                       "kept free, ")


def test_a_copy_to_a_full_disk_is_said_and_the_run_ends_well(small_disk, tmp_path, capsys):
    """--copy-to a LoRA folder on a full disk ended a finished run as an error, its samples undrawn."""
    from lowvram.cli import main

    mount, _ = small_disk
    loras = mount("loras", 64)
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "1",
                 "--copy-to", str(loras), "--sample-prompt", "lvshape"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"could not copy the LoRA to {loras / 'run.safetensors'}" in said and "sample" in said, said
    assert (out / "run.safetensors").is_file() and not (loras / "run.safetensors").exists()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["missing"] == ["copy_to"]


def test_a_disk_that_fills_with_the_final_samples_ends_the_run_well_saying_how_to_draw_them(small_disk, capsys,
                                                                                             tmp_path):
    """The LoRA fits, its 384 px sample does not (it needs 0.56 MiB besides the 1 MiB every write leaves free): the
    finished run ended as a failure, exit 2, saying to continue it with --resume (nothing left to train)."""
    from lowvram.cli import main

    mount, _ = small_disk
    out = mount("out", 1800)
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "2",
                 "--sample-prompt", "lvshape --w 384 --h 384 --s 1"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert (f"warning: no room for a sample image in {out / 'samples'}: it needs 1.59 MiB with the 1.00 MiB kept free"
            in said and f"{out / 'out.safetensors'} is saved: free space, then lowvram generate --model tiny --lora "
            f"{out / 'out.safetensors'} --prompt" in said), said
    # the command it gives draws the sample (a bare --lora lacked the required --prompt)
    again = shlex.split(said.split("free space, then ", 1)[1].split(" draws it", 1)[0])
    assert main([*again[1:], "--output", str(tmp_path / "again.png")]) == 0
    assert (out / "out.safetensors").is_file() and not any((out / "samples").iterdir())
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["missing"] == ["samples"]


def test_a_diffusers_copy_without_room_ends_the_run_well_and_leaves_no_part_of_it(small_disk, capsys, tmp_path):
    """--format diffusers wrote its copy straight with diffusers' saver: on a disk without room for it, after the
    LoRA and its checkpoint fitted, a safetensors traceback, the run ended as failed."""
    from lowvram.adapters import lora_files
    from lowvram.cli import main
    from lowvram.files import DiskFull

    mount, _ = small_disk
    out = mount("out", 3600)  # (the LoRA, 0.33 MiB, and its checkpoint, 1.9 MiB, fit; the copy, 0.33 MiB, not)
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "1",
                 "--format", "diffusers", "--rank", "64"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"warning: no room for the diffusers copy out-diffusers in {out}" in said, said
    assert "which diffusers' load_lora_weights reads as well" in said and "out-diffusers (diffusers'" not in said
    assert (out / "out.safetensors").is_file() and not any(p.name.endswith("diffusers.tmp") for p in out.iterdir())
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["missing"] == ["diffusers"]
    with pytest.raises(DiskFull):  # (the check before writing; a disk filled meanwhile fails the write alike)
        lora_files.save_diffusers(train_tiny(tmp_path / "tiny"), out / "again-diffusers", "fp16")


def train_tiny(output: Path):
    from conftest import run_config

    from lowvram.train.loop import train

    # (its own output folder: the default, ./output, lay in the checkout, where another file's test looked for one)
    return train(run_config(max_steps=1, rank=64, output=str(output))).model


def test_a_dataset_zip_unpacked_onto_a_full_drive_is_one_line_and_leaves_nothing_half_unpacked(small_disk):
    """The Colab notebook unpacks a zip beside itself on Drive: a full one ended in an OSError traceback and left a
    half-unpacked folder."""
    import zipfile

    from lowvram.dataset_zip import unpack_dataset_zip
    from lowvram.errors import LowvramError

    mount, _ = small_disk
    drive = mount("drive", 256)
    archive = drive / "pets.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:  # (tiny zipped, 2 MiB unpacked)
        zipped.writestr("pets/5_cat/a.txt", "0" * 2**21)
    with pytest.raises(LowvramError, match=f"DATA: {archive} could not be unpacked beside it .*; free space there"):
        unpack_dataset_zip(archive)
    assert sorted(p.name for p in drive.iterdir()) == ["pets.zip"]
