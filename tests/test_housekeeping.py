"""`lowvram cache`: the entries no run used lately go, the ones a run uses stay, the next run rebuilds only what
went, nothing is removed from under a running run, and the captions kept from before an edit are never removed."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_config, without_root_override
from rich.console import Console
from test_cache import prepare, setup

from lowvram.cli import main
from lowvram.locks import hold_exclusive, hold_shared
from lowvram.models import load_model
from lowvram.resolve import cache_in_use
from lowvram.train.loop import train

DAYS_40 = 40 * 24 * 3600


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def age(paths, seconds):
    for path in paths:
        then = time.time() - seconds
        os.utime(path, (then, then))


def entries(cache, kind):
    return sorted((cache / kind).rglob("*.safetensors"))


def test_entries_no_run_used_lately_go_and_the_next_run_rebuilds_only_them(tmp_path, sample_data, tiny, capsys):
    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    latents, texts = entries(cache, "latents"), entries(cache, "text")
    assert (len(latents), len(texts)) == (6, 6)
    kept_caption = cache / "edited-captions" / "data-1234" / "a.txt"
    kept_caption.parent.mkdir(parents=True)
    kept_caption.write_text("the caption before an edit")
    age([*latents, *texts, kept_caption], DAYS_40)

    prepare(config, tiny, sample_data, cache)  # a run that uses every entry marks it as used
    assert main(["cache", "--cache-dir", str(cache), "--unused-for", "30"]) == 0
    assert "removed 0 files" in capsys.readouterr().out

    age([*latents[:3], texts[0]], DAYS_40)
    assert main(["cache", "--cache-dir", str(cache), "--unused-for", "30d", "--dry-run"]) == 0
    assert "would remove 4 files" in capsys.readouterr().out and len(entries(cache, "latents")) == 6
    assert main(["cache", "--cache-dir", str(cache), "--unused-for", "6w", "--dry-run"]) == 0  # 42 days: none
    assert "would remove 0 files" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", str(cache), "--unused-for", "4w"]) == 0
    assert "removed 4 files" in capsys.readouterr().out
    assert entries(cache, "latents") == latents[3:] and entries(cache, "text") == texts[1:]
    assert kept_caption.read_text() == "the caption before an edit"

    again = prepare(config, tiny, sample_data, cache)
    assert (again.encoded_latents, again.encoded_texts) == (3, 1)

    assert main(["cache", "--cache-dir", str(cache)]) == 0
    table = capsys.readouterr().out
    for line in ("latents        6 files", "text           6 files", "edited-captions      1 file "):
        assert line.split()[0] in table and " ".join(line.split()[1:]) in " ".join(table.split()), (line, table)


def test_nothing_is_removed_from_under_a_run_and_a_killed_runs_lock_goes_with_it(tmp_path, sample_data, tiny, capsys):
    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    backup = cache / "replaced-captions" / "data-20261202-120000" / "a.txt"
    backup.parent.mkdir(parents=True)
    backup.write_text("the caption caption --overwrite replaced")
    def entries():  # beside the lock's own files
        return sorted(p for p in cache.rglob("*") if p.is_file() and ".in-use" not in p.parts)

    before = entries()

    a_run = (f"import time\nfrom lowvram.resolve import cache_in_use\nwith cache_in_use({str(cache)!r}):\n"
             "    print('ready', flush=True)\n    time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", a_run], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert main(["cache", "--cache-dir", str(cache), "--clear"]) == 75  # (busy: try again later)
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "a lowvram run (or another `lowvram cache`) is using this cache" in error
        import pwd  # (a lab's teacher asks which student's run holds it)

        assert f"is using this cache (pid {holder.pid} of {pwd.getpwuid(os.getuid()).pw_name}); run" in error
        assert main(["cache", "--cache-dir", str(cache), "--clear", "--dry-run"]) == 0  # counting removes nothing
        assert "would remove 13 files" in capsys.readouterr().out
        assert entries() == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    assert main(["cache", "--cache-dir", str(cache), "--clear"]) == 0
    assert "removed 13 files" in capsys.readouterr().out  # 6 latents, 6 text embeddings, the scan index
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert left == [".in-use", ".in-use/exclusive.lock", "latents", "replaced-captions",  # the killed run's went
                    "replaced-captions/data-20261202-120000", "replaced-captions/data-20261202-120000/a.txt", "scan",
                    "text"], left
    assert backup.read_text() == "the caption caption --overwrite replaced"


def test_only_lowvrams_own_entries_are_removed_never_through_a_link(tmp_path, sample_data, tiny, capsys):
    """A --cache-dir that is a home folder, or a cache whose folder is a link to the user's files, loses nothing
    but files named as lowvram names its entries."""
    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    home = tmp_path / "home"
    mine = [home / "text" / "notes.md", home / "scan" / "receipt.json", home / "latents" / "ab" / "photo.safetensors",
            home / "photos" / "cat.png"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    (cache / "text").rename(tmp_path / "elsewhere")
    (cache / "text").symlink_to(tmp_path / "elsewhere")
    linked = sorted((tmp_path / "elsewhere").rglob("*"))
    for folder in (home, cache):
        assert main(["cache", "--cache-dir", str(folder), "--clear"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("removed 0 files")
    assert all(path.read_text() == "mine" for path in mine)
    assert sorted((tmp_path / "elsewhere").rglob("*")) == linked and entries(cache, "latents") == []


def test_what_cannot_be_read_is_named_in_one_line(tmp_path, sample_data, tiny):
    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    locked = next((cache / "latents").iterdir())  # as one `sudo lowvram train` leaves a folder of it
    as_a_user = without_root_override()
    locked.chmod(0)
    try:
        for args in ([], ["--clear"]):
            done = subprocess.run([*as_a_user, sys.executable, "-m", "lowvram", "cache", "--cache-dir", str(cache),
                                   *args], capture_output=True, text=True, check=False)
            assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
            assert f"{locked}: cannot be read (Permission denied)" in done.stderr
    finally:
        locked.chmod(0o755)
    assert len(entries(cache, "latents")) == 6  # nothing was removed before the refusal


def test_no_cache_where_one_was_named_is_said(tmp_path, capsys):
    assert main(["cache", "--cache-dir", str(tmp_path / "typo"), "--clear"]) == 0
    assert "no cache there" in capsys.readouterr().out and not (tmp_path / "typo").exists()


def test_a_training_run_keeps_the_cache_while_it_runs_and_frees_it_when_it_ends(tmp_path, capsys):
    """A run in this process (a notebook's) holds the cache through its steps; the result it hands back holds
    nothing, so the cache can be cleared right after."""
    cache = tmp_path / "cache"
    refusals = []

    class Watching(Console):
        def print(self, *objects, **kwargs):
            if any("step" in str(o) for o in objects) and not refusals:  # mid-run
                refusals.append(main(["cache", "--cache-dir", str(cache), "--clear"]))
            super().print(*objects, **kwargs)

    result = train(run_config(output=str(tmp_path / "out"), cache_dir=str(cache), max_steps=2),
                   Watching(file=io.StringIO()))
    assert refusals == [75]
    assert "a lowvram run (or another `lowvram cache`) is using this cache" in capsys.readouterr().err
    assert main(["cache", "--cache-dir", str(cache), "--clear"]) == 0 and result.data is not None
    assert "removed 13 files" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    (["--unused-for", "soon"], "argument --unused-for: give a number of days (30 or 30d), hours (12h) or weeks (2w)"),
    (["--unused-for", "-3"], "argument --unused-for: give a number of days"),
    (["--unused-for", "3", "--clear"], "argument --clear: not allowed with argument --unused-for"),
    (["--unused-for", "inf"], "argument --unused-for: give a number of days"),
    (["--unused-for", "1e300"], "up to 36500 days"),
    (["--cache-dir", " ", "--clear"], "argument --cache-dir: empty; name the cache folder"),
])
def test_a_wrong_age_or_folder_is_one_line_naming_the_option(args, expected, capsys):
    assert main(["cache", *args]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1, error


def test_a_file_or_a_dry_run_of_nothing_is_refused_in_one_line(tmp_path, capsys):
    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("")
    for args, expected in ((["--cache-dir", str(not_a_folder), "--clear"], "a file, not a folder"),
                           (["--cache-dir", str(tmp_path), "--dry-run"], "--dry-run: only used with --unused-for")):
        assert main(["cache", *args]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and expected in error, error
    assert not_a_folder.exists()


def test_a_scan_waits_for_a_removal_and_says_so(tmp_path, sample_data):
    """check-data (and a run's scan) writes the dataset's index into the cache: it waits while `lowvram cache`
    removes entries, instead of failing on a folder removed under it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    # (held until the scan says it waits: a held time of its own ran out first on a loaded machine)
    holder = (f"import select, sys\nfrom lowvram.locks import hold_exclusive\n"
              f"with hold_exclusive({str(cache / '.in-use')!r}):\n    print('held', flush=True)\n"
              "    select.select([sys.stdin], [], [], 60)")  # (at most a minute: a scan that never waits fails)
    removal = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert removal.stdout.readline().strip() == "held"
    scan = subprocess.Popen([sys.executable, "-m", "lowvram", "check-data", str(sample_data), "--model", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LOWVRAM_CACHE_DIR": str(cache), "COLUMNS": "300"})
    said = scan.stdout.readline()
    removal.communicate("done\n", timeout=60)
    out, err = scan.communicate(timeout=120)
    assert scan.returncode == 0, err
    assert f"waiting for `lowvram cache` to finish removing entries from {cache}" in said, said + out
    assert len(list((cache / "scan").glob("*.json"))) == 1


def test_runs_share_the_cache_lock_each_by_a_file_of_its_own_which_a_killed_run_leaves_to_be_removed(tmp_path):
    """The lock is one file per run (the locks every platform has, msvcrt's included): any number of runs hold it at
    once, `lowvram cache` only when none does. A killed run's file is left unlocked, and removed by the next
    removal."""
    folder = tmp_path / "cache" / ".in-use"
    folder.parent.mkdir()
    a_run = (f"import time\nfrom lowvram.resolve import cache_in_use\nwith cache_in_use({str(folder.parent)!r}):\n"
             "    print('ready', flush=True)\n    time.sleep(600)")
    runs = [subprocess.Popen([sys.executable, "-c", a_run], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert [run.stdout.readline().strip() for run in runs] == ["ready", "ready"]  # neither waits for the other
        assert len(list(folder.glob("holder-*.lock"))) == 2
        for run in runs:
            with pytest.raises(BlockingIOError), hold_exclusive(folder):
                pass
            run.send_signal(signal.SIGKILL)
            run.wait()
        assert list(folder.glob("holder-*.lock"))  # a killed run's file stays (the first went as the second held)
        with hold_exclusive(folder):
            assert list(folder.glob("holder-*.lock")) == []
            with pytest.raises(BlockingIOError), hold_exclusive(folder):  # one removal at a time
                pass
    finally:
        for run in runs:
            run.kill()
            run.wait()
    with cache_in_use(folder.parent):  # and a run in this process, after it
        assert len(list(folder.glob("holder-*.lock"))) == 1
    assert list(folder.glob("holder-*.lock")) == []


def test_a_lock_folder_of_another_users_still_locks_or_says_it_cannot(tmp_path):
    """After one `sudo lowvram cache --clear` the lock's folder is root's: a run of another user still counts, and
    one that cannot hold the lock says so; a removal that cannot lock refuses instead of going on unlocked."""
    cache = tmp_path / "cache"
    folder = cache / ".in-use"
    as_a_user = without_root_override("fowner")
    a_run = ("import time\nfrom rich.console import Console\nfrom lowvram.resolve import cache_in_use\n"
             f"with cache_in_use({str(cache)!r}, Console(stderr=True, width=300)):\n    print('ready', flush=True)")

    def as_another_user(*command):
        return subprocess.run([*as_a_user, sys.executable, *command], capture_output=True, text=True, check=False)

    with hold_exclusive(folder):  # the owner's removal made the folder and its lock file
        pass
    with cache_in_use(cache):  # and the owner's run holds the cache
        for path in folder.iterdir():
            path.chmod(0o444)
        folder.chmod(0o555)
        try:
            refused = as_another_user("-m", "lowvram", "cache", "--cache-dir", str(cache), "--clear")
            assert refused.returncode == 75 and "a lowvram run (or another `lowvram cache`) is using this cache" in (
                refused.stderr), refused.stderr
            unlocked = as_another_user("-c", a_run)
            assert unlocked.stdout.strip() == "ready", unlocked.stderr
            assert "warning: the cache's lock cannot be taken" in " ".join(unlocked.stderr.split()), unlocked.stderr
        finally:
            folder.chmod(0o755)
    (folder / "holder-1-0123abcd.lock").write_bytes(b"")  # a killed run's, which this user cannot remove
    folder.chmod(0o555)
    try:  # not "in use", which would never change
        refused = as_another_user("-m", "lowvram", "cache", "--cache-dir", str(cache), "--clear")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"{folder}: cannot be locked (Permission denied)" in refused.stderr
    finally:
        folder.chmod(0o755)
    (folder / "exclusive.lock").unlink()
    folder.chmod(0o555)
    try:
        refused = as_another_user("-m", "lowvram", "cache", "--cache-dir", str(cache), "--clear")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"{folder}: cannot be locked (Permission denied)" in refused.stderr
    finally:
        folder.chmod(0o755)


def test_an_earlier_lowvrams_lock_file_in_use_holds_off_a_removal_and_runs_share_it(tmp_path):
    """An earlier lowvram's run held its one lock file, shared, while it read the cache: a removal is refused while
    it does, and a new run shares the file with it (two readers never wait for each other) until a removal turns
    it into the folder."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".in-use").write_bytes(b"")
    earlier_run = (f"import fcntl, time\nlock = open({str(cache / '.in-use')!r}, 'a+b')\n"
                   "fcntl.flock(lock, fcntl.LOCK_SH)\nprint('ready', flush=True)\ntime.sleep(600)")
    earlier = subprocess.Popen([sys.executable, "-c", earlier_run], stdout=subprocess.PIPE, text=True)
    waited = []
    try:
        assert earlier.stdout.readline().strip() == "ready"
        with hold_shared(cache / ".in-use", waiting=lambda: waited.append(True)):
            assert (cache / ".in-use").is_file() and not waited
        with pytest.raises(BlockingIOError), hold_exclusive(cache / ".in-use"):
            pass
        assert (cache / ".in-use").is_file()
    finally:
        earlier.kill()
        earlier.wait()
    with cache_in_use(cache), pytest.raises(BlockingIOError), hold_exclusive(cache / ".in-use"):
        pass  # a new run on the earlier file counts too
    with hold_exclusive(cache / ".in-use"):
        assert (cache / ".in-use").is_dir()
    with cache_in_use(cache):
        assert len(list((cache / ".in-use").glob("holder-*.lock"))) == 1


def test_a_run_on_a_shared_cache_whose_folders_another_user_keeps_to_themselves_trains_from_memory(tmp_path):
    """A lab's cache (1777) where another user's run (umask 077) made latents/, text/ and scan/: the next user's
    run ended in a PermissionError traceback at the scan, then at the first entry; the lock warning came twice."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root (to own the folders as another user) and setpriv (to drop root's override)")
    cache = tmp_path / "cache"
    for name in ("latents", "text", "scan", ".in-use"):
        (cache / name).mkdir(parents=True)
        os.chown(cache / name, 12345, 12345)
        (cache / name).chmod(0o700)
    cache.chmod(0o1777)
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                           "lowvram", "train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "out"),
                           "--max-steps", "1", "--cache-dir", str(cache)], capture_output=True, text=True,
                          check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("the cache's lock cannot be taken") == 1
    assert "encoding into memory for this run instead" in done.stdout
    assert "(nor will the next run: give --cache-dir a folder you can write, or share the cache as a group's " \
           "folder" in " ".join(done.stdout.split())  # ("the next run encodes again" read as if it would not)
    assert (tmp_path / "out" / "out.safetensors").is_file()
    # a cache that is not there and cannot be made (HOME missing or not one's own): no owner to run as
    from PIL import Image

    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", 12345, 12345)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "images" / "a.png")
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                           "lowvram", "check-data", str(tmp_path / "images"), "--cache-dir",
                           str(tmp_path / "theirs" / "cache")],
                          capture_output=True, text=True, check=False, timeout=600)
    assert "give --cache-dir or LOWVRAM_CACHE_DIR a folder you can write" in " ".join(done.stdout.split())


def test_the_listing_passes_over_another_users_private_ui_folder_and_says_so(tmp_path):
    """Each user's UI keeps Gradio's copies in a folder of its own (0700) in a lab's shared cache: the next user's
    `lowvram cache` stopped at it ('cannot be read ... run as the user who owns the cache')."""
    as_a_user = without_root_override()
    cache = tmp_path / "cache"
    private = cache / "ui" / "gradio-12345"
    private.mkdir(parents=True)
    (private / "copy.png").write_bytes(b"x" * 10)
    (cache / "ui" / "ui-run-7860.log").write_text("a run's log\n")
    private.chmod(0o000)
    try:
        done = subprocess.run([*as_a_user, sys.executable, "-m", "lowvram", "cache", "--cache-dir", str(cache)],
                              capture_output=True, text=True, check=False, timeout=120)
    finally:
        private.chmod(0o700)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.strip().startswith("ui "))
    assert "1 file " in line and line.endswith("(and 1 folder other users keep to themselves)")
