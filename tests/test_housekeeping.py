"""`lowvram cache`: the entries no run used lately go, the ones a run uses stay, the next run rebuilds only what
went, nothing is removed from under a running run, and the captions kept from before an edit are never removed."""

import os
import signal
import subprocess
import sys
import time

import pytest
from test_cache import prepare, setup

from lowvram.cli import main
from lowvram.models import load_model

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
    before = sorted(p for p in cache.rglob("*") if p.is_file())

    a_run = (f"import time\nfrom lowvram.data.cache import TensorStore\nstore = TensorStore({str(cache)!r}, 'latents')"
             "\nprint('ready', flush=True)\ntime.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", a_run], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert main(["cache", "--cache-dir", str(cache), "--clear"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "a lowvram run is using this cache" in error, error
        assert sorted(p for p in cache.rglob("*") if p.is_file()) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    assert main(["cache", "--cache-dir", str(cache), "--clear"]) == 0
    assert "removed 13 files" in capsys.readouterr().out  # 6 latents, 6 text embeddings, the scan index
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert left == [".in-use", "latents", "replaced-captions", "replaced-captions/data-20261202-120000",
                    "replaced-captions/data-20261202-120000/a.txt", "scan", "text"], left
    assert backup.read_text() == "the caption caption --overwrite replaced"


@pytest.mark.parametrize("args, expected", [
    (["--unused-for", "soon"], "argument --unused-for: give a number of days (30 or 30d), hours (12h) or weeks (2w)"),
    (["--unused-for", "-3"], "argument --unused-for: give a number of days"),
    (["--unused-for", "3", "--clear"], "argument --clear: not allowed with argument --unused-for"),
])
def test_a_wrong_age_is_one_line_naming_the_option(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", *args])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and expected in error and error.count("\n") == 1, error


def test_a_file_given_as_the_cache_is_refused_in_one_line(tmp_path, capsys):
    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("")
    assert main(["cache", "--cache-dir", str(not_a_folder), "--clear"]) == 2
    assert "a file, not a folder" in capsys.readouterr().err and not_a_folder.exists()
