"""`lowvram caption`: real captioning models (a tiny ONNX tagger run by onnxruntime, a tiny BLIP run by
transformers) write captions for the images that lack them, and nothing else in the dataset folder changes."""

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from captioners import TAGGER_SIDE, build_blip, build_tagger
from conftest import without_root_override
from PIL import Image

from lowvram.caption import _tagger_input
from lowvram.cli import main
from lowvram.plan.captioner import weight_bytes


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return build_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return build_blip(tmp_path_factory.mktemp("blip") / "blip-tiny")


def colour_dataset(root: Path) -> Path:
    """Square single-colour images, one captioned, in a kohya repeat folder; plus a broken file."""
    folder = root / "3_colours"
    folder.mkdir(parents=True)
    for name, rgb in (("red", (220, 40, 40)), ("green", (40, 200, 60)), ("blue", (40, 60, 220)),
                      ("white", (240, 240, 240)), ("dark", (20, 20, 20))):
        Image.new("RGB", (96, 96), rgb).save(folder / f"{name}.png")
    (folder / "dark.txt").write_text("my own words about the dark one\n")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def captions(root: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in root.rglob("*.txt")}


def test_tagger_writes_tags_for_uncaptioned_images_only(tmp_path, tagger, capsys):
    data = colour_dataset(tmp_path / "data")
    before = snapshot(data)
    assert main(["caption", str(data), "--caption-model", str(tagger), "--trigger-word", "zkw"]) == 0
    after = snapshot(data)
    new = set(after) - set(before)
    assert new == {f"3_colours/{n}.txt" for n in ("red", "green", "blue", "white")}  # nothing else, no temp files
    assert {k: after[k] for k in before} == before  # images and the existing caption untouched
    got = captions(data)
    # the tagger reads BGR: were the channels not swapped, red would come back as blue
    assert got["red"] == "zkw, red theme\n"
    assert got["green"] == "zkw, green theme\n"
    assert got["blue"] == "zkw, blue theme\n"
    assert got["white"] == "zkw, blue theme, green theme, red theme, bright theme\n"  # most confident first
    assert got["dark"] == "my own words about the dark one\n"
    out = capsys.readouterr().out
    assert "skipped 3_colours/broken.jpg: " in out and "wrote 4 caption(s); kept 1 existing" in out


def test_an_empty_txt_beside_the_caption_that_trains_is_not_written_over_it(tmp_path, tagger, monkeypatch, capsys):
    """Training reads a .caption where the .txt beside it is empty (a tagger's tags beside an empty .txt):
    caption counted such an image as uncaptioned and wrote tags into the .txt, which then trained instead."""
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    data = colour_dataset(tmp_path / "data")
    folder = data / "3_colours"
    (folder / "red.txt").write_bytes(b"\r\n\r\n")
    (folder / "red.caption").write_text("a red square I wrote")
    assert main(["caption", str(data), "--caption-model", str(tagger)]) == 0
    assert (folder / "red.txt").read_bytes() == b"\r\n\r\n" and "kept 2 existing" in capsys.readouterr().out
    assert main(["caption", str(data), "--caption-model", str(tagger), "--append"]) == 0
    assert (folder / "red.caption").read_text() == "a red square I wrote, red theme\n"
    assert (folder / "red.txt").read_bytes() == b"\r\n\r\n"


def test_a_vram_budget_without_a_gpu_captions_on_the_cpu(tmp_path, tagger, capsys):
    """As `train --auto --vram` does: the budget plans for a GPU, and where there is none the CPU does the work."""
    data = colour_dataset(tmp_path / "data")
    assert main(["caption", str(data), "--caption-model", str(tagger), "--vram", "4GB"]) == 0
    out, err = capsys.readouterr()
    assert "--vram: no CUDA GPU here, so the CPU writes the captions" in err and "on the CPU" in out
    assert captions(data)["red"] == "red theme\n"


def test_tagger_thresholds_and_exclusions(tmp_path, tagger):
    data = colour_dataset(tmp_path / "data")
    assert main(["caption", str(data), "--caption-model", str(tagger), "--exclude-tags", "red_theme, rating",
                 "--exclude-tags", "bright theme", "--character-threshold", "0.4", "--keep-underscores"]) == 0
    got = captions(data)
    assert got["red"] == "hatsune_miku\n"  # character tags first; the excluded one gone
    assert got["white"] == "hatsune_miku, blue_theme, green_theme\n"
    assert "general" not in "".join(got.values())  # rating tags are never written


def test_tags_are_written_as_kohyas_tagger_writes_them_and_options_it_does_not_read_are_said(tmp_path, tagger,
                                                                                              capsys):
    """A short tag keeps its underscores (o_o is a face, not 'o o'); excluded tags and a trigger word match in any
    case and with underscores or spaces; an image-to-text option given to a tagger is said to do nothing; an image
    no tag scored high enough for is said to be that, not that 'the model gave no caption'."""
    faces = tmp_path / "faces"
    shutil.copytree(tagger, faces)
    tags = faces / "selected_tags.csv"
    tags.write_text(tags.read_text().replace("hatsune_miku", "o_o"))
    data = colour_dataset(tmp_path / "data")
    assert main(["caption", str(data), "--caption-model", str(faces), "--exclude-tags", "Red_Theme",
                 "--trigger-word", "Blue_Theme", "--character-threshold", "0.4", "--prompt", "a photo of"]) == 0
    got = captions(data)
    assert got["red"] == "Blue_Theme, o_o\n" and got["blue"] == "Blue_Theme, o_o\n"
    assert got["white"] == "Blue_Theme, o_o, green theme, bright theme\n"  # no red theme, no blue theme twice
    out = " ".join(capsys.readouterr().out.split())
    assert "note: --prompt: not read by a tagger (image-to-text models read it)" in out
    assert main(["caption", str(tmp_path / "data"), "--caption-model", str(tagger), "--overwrite",
                 "--character-threshold", "1"]) == 0
    assert "skipped 3_colours/dark.png: no tag reached --threshold or --character-threshold" in capsys.readouterr().out


def test_append_adds_the_tags_a_caption_lacks_at_its_end_and_keeps_the_old_one(tmp_path, tagger, monkeypatch,
                                                                              capsys):
    """kohya's --append_tags: lowvram had no way to add a tagger's tags to captions already written."""
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    data = colour_dataset(tmp_path / "data")
    folder = data / "3_colours"
    (folder / "red.txt").write_text("my red one, Red_Theme,\nanother line\n")  # held already, in another writing
    (folder / "green.txt").write_text("zkw, a green square\n")
    assert main(["caption", str(data), "--caption-model", str(tagger), "--append", "--trigger-word", "zkw"]) == 0
    got = captions(data)
    assert got["red"] == "zkw, my red one, Red_Theme\nanother line\n"  # the trigger first, no tag twice
    assert got["green"] == "zkw, a green square, green theme\n"
    assert got["blue"] == "zkw, blue theme\n"  # none yet: written as without --append
    assert got["dark"] == "zkw, my own words about the dark one\n"  # (no tag of it reaches the threshold)
    kept = {p.name: p.read_text() for p in (tmp_path / "cache" / "replaced-captions").rglob("*.txt")}
    assert kept == {"red.txt": "my red one, Red_Theme,\nanother line\n", "green.txt": "zkw, a green square\n",
                    "dark.txt": "my own words about the dark one\n"}
    capsys.readouterr()
    before = snapshot(data)
    assert main(["caption", str(data), "--caption-model", str(tagger), "--append", "--trigger-word", "zkw"]) == 0
    assert snapshot(data) == before and "wrote 0 caption(s); kept 5 existing" in capsys.readouterr().out
    assert main(["caption", str(data), "--caption-model", str(tagger), "--append", "--overwrite"]) == 2
    assert "--append: --overwrite replaces the captions instead of adding to them" in capsys.readouterr().err
    # a booru tag as A1111's WD14 writes it, brackets escaped, is the tagger's (it was added a second time)
    from lowvram.caption import _appended

    assert _appended("hatsune_miku \\(vocaloid\\), 1girl", "hatsune miku (vocaloid), smile", None) == (
        "hatsune_miku \\(vocaloid\\), 1girl, smile")


def test_append_reads_chinese_commas_and_says_a_legacy_caption_it_writes_as_utf8(tmp_path, tagger, monkeypatch,
                                                                                 capsys):
    """A tag held after a full-width comma was added again; a Shift_JIS caption was rewritten as UTF-8 unsaid."""
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    data = colour_dataset(tmp_path / "data")
    folder = data / "3_colours"
    (folder / "green.txt").write_text("緑，green theme\n", encoding="utf-8")
    (folder / "red.txt").write_bytes("赤い四角".encode("cp932"))  # Notepad's ANSI on a Japanese Windows
    capsys.readouterr()
    assert main(["caption", str(data), "--caption-model", str(tagger), "--append"]) == 0
    got = captions(data)
    assert (got["green"], got["red"]) == ("緑，green theme\n", "赤い四角, red theme\n")
    assert ("1 caption(s) not in UTF-8 (3_colours/red.txt read as Shift_JIS) written back as UTF-8" in
            " ".join(capsys.readouterr().out.split()))


def test_rerun_keeps_everything_and_overwrite_keeps_the_old_captions(tmp_path, tagger, monkeypatch, capsys):
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    data = colour_dataset(tmp_path / "data")
    (data / "3_colours" / "green.txt").write_text("  \n")  # an empty caption file counts as none
    main(["caption", str(data), "--caption-model", str(tagger)])
    first = snapshot(data)
    assert captions(data)["green"] == "green theme\n"
    capsys.readouterr()
    main(["caption", str(data), "--caption-model", str(tagger)])
    assert snapshot(data) == first
    assert "wrote 0 caption(s); kept 5 existing" in capsys.readouterr().out
    # a trigger word the option writes into new captions only: the kept ones lacking it were not said
    (data / "3_colours" / "green.txt").write_text("zkw, green theme\n")
    main(["caption", str(data), "--caption-model", str(tagger), "--trigger-word", "zkw"])
    assert ("note: 4 of the 5 caption(s) kept lack the trigger word 'zkw' (e.g. 3_colours/" in
            " ".join(capsys.readouterr().out.split()))
    (data / "3_colours" / "green.txt").write_text("green theme\n")
    first = snapshot(data)

    main(["caption", str(data), "--caption-model", str(tagger), "--overwrite", "--trigger-word", "zkw"])
    assert captions(data)["dark"] == "zkw\n"
    kept = list((tmp_path / "cache" / "replaced-captions").rglob("*.txt"))
    assert {p.relative_to(p.parents[1]).as_posix(): p.read_text() for p in kept}["3_colours/dark.txt"] == \
        "my own words about the dark one\n"
    assert len(kept) == 5
    assert set(snapshot(data)) == set(first)


def test_a_file_too_big_for_a_caption_is_never_replaced_unkept_and_a_utf16_one_is_kept_byte_for_byte(
        tmp_path, tagger, monkeypatch, capsys):
    """Training reads neither a file over 1 MiB (a log saved as .txt) nor garbled text; caption must not take the
    first for an empty caption to write over, nor keep the second as replacement characters."""
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    data = colour_dataset(tmp_path / "data")
    log = (b"a log line that is not a caption\n" * 40_000)[: 2**20 + 10]
    (data / "3_colours" / "red.txt").write_bytes(log)
    wide = "my own words \u2014 in UTF-16\n".encode("utf-16")
    (data / "3_colours" / "dark.txt").write_bytes(wide)
    cjk = "\u732b\u306e\u7d75\u3001\u8d64\u3044\u80cc\u666f, a".encode("utf-16-le")  # no byte-order mark: no text
    (data / "3_colours" / "green.txt").write_bytes(cjk)  # training reads, but the user's words all the same
    main(["caption", str(data), "--caption-model", str(tagger)])
    assert (data / "3_colours" / "red.txt").read_bytes() == log  # kept: not lowvram's to write over
    assert (data / "3_colours" / "green.txt").read_bytes() == cjk
    out = capsys.readouterr().out
    assert ("skipped 3_colours/green.png: green.txt is no text training reads: left as it is (save it as UTF-8, or "
            "--overwrite replaces it and keeps it in the cache)") in out
    assert "skipped 3_colours/red.png: red.txt is over 1.00 MiB, no caption: left as it is (move it away" in out
    main(["caption", str(data), "--caption-model", str(tagger), "--overwrite", "--trigger-word", "zkw"])
    kept = {p.name: p.read_bytes() for p in (tmp_path / "cache" / "replaced-captions").rglob("*.txt")}
    assert kept["red.txt"] == log and kept["dark.txt"] == wide and kept["green.txt"] == cjk


def test_a_folder_where_a_caption_goes_is_passed_over_not_the_end_of_the_run(tmp_path, tagger, capsys):
    data = colour_dataset(tmp_path / "data")
    (data / "3_colours" / "red.txt").mkdir()
    (data / "3_colours" / "white.txt").symlink_to(tmp_path / "gone.txt")
    assert main(["caption", str(data), "--caption-model", str(tagger)]) == 0
    out = capsys.readouterr().out
    assert ("skipped 3_colours/red.png: red.txt is not a file (a folder or a broken link) where its caption goes: "
            "left as it is; rename it") in out
    assert "skipped 3_colours/white.png: white.txt is not a file" in out and "wrote 2 caption(s)" in out
    assert (data / "3_colours" / "white.txt").is_symlink() and (data / "3_colours" / "blue.txt").is_file()


def test_a_dataset_folder_captions_cannot_go_into_is_said_before_the_model_loads(tmp_path, tagger):
    """A lab's read-only dataset: the run loaded the model, then stopped at its first caption (after --append had
    made a backup folder in the cache); a dry run said nothing."""
    import os
    import subprocess

    as_a_user = without_root_override()
    data = colour_dataset(tmp_path / "data")
    (data / "3_colours").chmod(0o555)
    try:
        for extra in (["--dry-run"], ["--append"]):
            done = subprocess.run([*as_a_user, sys.executable, "-m", "lowvram", "caption", str(data),
                                   "--caption-model", str(tagger), *extra], capture_output=True, text=True,
                                  check=False, timeout=300,
                                  env={**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "c")})
            assert done.returncode == 2, done.stderr
            assert done.stderr.strip().splitlines() == [
                (f"lowvram caption: error: can't write in {data / '3_colours'}: {data / '3_colours'} is not "
                 "writable (permission denied): captions are written beside their images; caption a copy of the "
                 "dataset you can write in, or ask its owner")]
        assert not (tmp_path / "c" / "replaced-captions").exists()
    finally:
        (data / "3_colours").chmod(0o755)


def test_images_of_one_name_are_not_captioned_into_one_file_and_check_data_names_them(tmp_path, tagger,
                                                                                      monkeypatch, capsys):
    """pic.png and pic.jpg read one pic.txt: captioning both wrote one's tags over the other's, and --overwrite kept
    the first one's new caption away over the user's own, which was then nowhere."""
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    data = colour_dataset(tmp_path / "data")
    folder = data / "3_colours"
    Image.new("RGB", (96, 96), (40, 60, 220)).save(folder / "red.jpg")
    (folder / "red.txt").write_text("my hand-written caption\n")
    (folder / "more").mkdir()  # a folder in a folder: not captioned, as not trained, and said
    Image.new("RGB", (96, 96), (40, 60, 220)).save(folder / "more" / "deep.png")
    (data / "2019").mkdir()  # a year's folder: passed over, and said (it was not captioned, unsaid)
    Image.new("RGB", (96, 96), (40, 60, 220)).save(data / "2019" / "old.png")
    assert main(["caption", str(data), "--caption-model", str(tagger), "--overwrite"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: ignored folder 3_colours/more/ (1 image in it and below do not train)" in out
    assert "note: skipped folder 2019/ (1 image in it and below do not train): 2019 is a year rather than" in out
    assert "skipped 3_colours/red.jpg: red.jpg and red.png share one caption file, red.txt: rename one so that " \
           "each has its own" in out and "skipped 3_colours/red.png: red.jpg and red.png share" in out
    assert (folder / "red.txt").read_text() == "my hand-written caption\n"
    assert main(["check-data", str(data)]) == 0
    assert "1 pair(s) of images in 3_colours/ of one name read one caption file: red.jpg and red.png (rename one " \
           "of each to give it its own caption)" in " ".join(capsys.readouterr().out.split())


def test_a_file_where_the_replaced_captions_go_is_named_not_a_run_without_end(tmp_path, tagger):
    """cache/replaced-captions a file (or a broken link): each next name, data-..-2, -3, ..., failed alike, forever."""
    import os
    import subprocess

    data = colour_dataset(tmp_path / "data")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "replaced-captions").write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "lowvram", "caption", str(data), "--caption-model", str(tagger),
                           "--overwrite"], capture_output=True, text=True, check=False, timeout=300,
                          env={**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 2
    assert f"{tmp_path / 'cache' / 'replaced-captions'} is not a folder; move it away" in done.stderr


def test_two_overwrites_within_a_second_keep_the_users_captions_apart(tmp_path, tagger, monkeypatch, capsys):
    """The second run's copies (the first run's captions) go to a folder of their own, not over the user's."""
    import time

    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(time, "strftime", lambda *args: "20261203-120000")
    data = colour_dataset(tmp_path / "data")
    for trigger in ("zkw", "qqv"):
        main(["caption", str(data), "--caption-model", str(tagger), "--overwrite", "--trigger-word", trigger])
    replaced = tmp_path / "cache" / "replaced-captions"
    assert (replaced / "data-20261203-120000" / "3_colours" / "dark.txt").read_text() == \
        "my own words about the dark one\n"
    assert (replaced / "data-20261203-120000-2" / "3_colours" / "dark.txt").read_text() == "zkw\n"
    assert f"the captions replaced are kept in {replaced / 'data-20261203-120000-2'}" in capsys.readouterr().out
    fresh = colour_dataset(tmp_path / "fresh" / "data")  # no caption to replace once dark.txt is gone
    (fresh / "3_colours" / "dark.txt").unlink()
    main(["caption", str(fresh), "--caption-model", str(tagger), "--overwrite"])
    assert sorted(p.name for p in replaced.iterdir()) == ["data-20261203-120000", "data-20261203-120000-2"]
    assert "the captions replaced are kept" not in capsys.readouterr().out  # nothing was: no folder is left


def test_a_run_stopped_midway_says_what_it_wrote_and_where_the_replaced_captions_are(tmp_path, tagger):
    """A real fault in a real process: a file-size limit refuses the copy of a large caption the second image's
    --overwrite replaces; the first image's original is in the backup folder, and the user is told where."""
    import os

    from preloaded import run

    folder = tmp_path / "data" / "3_colours"
    folder.mkdir(parents=True)
    for name, rgb in (("a_first", (220, 40, 40)), ("b_big", (40, 200, 60))):
        Image.new("RGB", (96, 96), rgb).save(folder / f"{name}.png")
    (folder / "a_first.txt").write_text("my own words\n")
    (folder / "b_big.txt").write_text("many words " * 400)
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = run([sys.executable, "-m", "lowvram", "caption", str(tmp_path / "data"), "--caption-model", str(tagger),
                "--overwrite", "--batch-size", "1"], env, limit_bytes=2048)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "file-size limit" in done.stderr
    [backup] = (tmp_path / "cache" / "replaced-captions").iterdir()
    assert (backup / "3_colours" / "a_first.txt").read_text() == "my own words\n"
    assert f"stopped after writing 1 caption(s); the captions it replaced are kept in {backup}" in done.stdout
    assert (folder / "a_first.txt").read_text() != "my own words\n"
    assert (folder / "b_big.txt").read_text() == "many words " * 400
    # nothing replaced before the stop (the copy that failed made its subfolder): nothing said kept, nothing left
    fresh = tmp_path / "fresh" / "data" / "3_colours"
    shutil.copytree(folder, fresh)
    (fresh / "a_first.txt").unlink()
    done = run([sys.executable, "-m", "lowvram", "caption", str(fresh.parent), "--caption-model", str(tagger),
                "--overwrite", "--batch-size", "1"], env, limit_bytes=2048)
    assert done.returncode == 2 and "stopped after writing 1 caption(s)\n" in done.stdout, done.stdout
    assert list((tmp_path / "cache" / "replaced-captions").iterdir()) == [backup]


def test_blip_writes_a_sentence(tmp_path, blip, sample_data, capsys):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    images = sorted(sample_data.rglob("*.png"))
    for image in images[:3]:
        image.with_suffix(".txt").unlink()
    before = snapshot(sample_data)
    assert main(["caption", str(sample_data), "--caption-model", str(blip), "--trigger-word", "lvshape",
                 "--batch-size", "2", "--max-length", "6"]) == 0
    assert "note:" not in capsys.readouterr().out  # no tagger option was given (an empty --exclude-tags is none)
    after = snapshot(sample_data)
    assert set(after) - set(before) == {p.with_suffix(".txt").relative_to(sample_data).as_posix() for p in images[:3]}
    assert {k: after[k] for k in before} == before
    # what the model itself says for the first image, as our training would see it (upright RGB)
    processor, model = AutoProcessor.from_pretrained(blip), AutoModelForImageTextToText.from_pretrained(blip)
    with torch.inference_mode():
        ids = model.generate(**processor(images=[Image.open(images[0]).convert("RGB")], return_tensors="pt"),
                             max_new_tokens=6, do_sample=False)
    expected = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert expected
    assert images[0].with_suffix(".txt").read_text() == f"lvshape, {expected}\n"


def test_blip_continues_the_prompt_it_is_given(tmp_path, blip):
    """--prompt: what the model is asked (BLIP continues it, Florence-2 takes a task token)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    data = colour_dataset(tmp_path / "data")
    assert main(["caption", str(data), "--caption-model", str(blip), "--prompt", "a picture of",
                 "--max-length", "6"]) == 0
    processor, model = AutoProcessor.from_pretrained(blip), AutoModelForImageTextToText.from_pretrained(blip)
    image = Image.open(data / "3_colours" / "red.png").convert("RGB")
    said = {}
    for prompt in ("a picture of", None):
        with torch.inference_mode():
            ids = model.generate(**processor(images=[image], text=prompt, return_tensors="pt"), max_new_tokens=6,
                                 do_sample=False)
        said[prompt] = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert said["a picture of"] != said[None]
    assert captions(data)["red"] == f"{said['a picture of']}\n"


def test_a_caption_file_with_an_upper_case_extension_is_the_images_caption(tmp_path, tagger, capsys):
    """Training reads 003.TXT (Windows keeps names' case as typed); captioning must not add a 003.txt beside it."""
    data = colour_dataset(tmp_path / "data")
    (data / "3_colours" / "red.TXT").write_text("my own red\n")
    (data / "3_colours" / "green.caption").write_text("my own green\n")  # read too, when there is no .txt
    assert main(["caption", str(data), "--caption-model", str(tagger)]) == 0
    assert not (data / "3_colours" / "red.txt").exists() and not (data / "3_colours" / "green.txt").exists()
    assert "kept 3 existing" in capsys.readouterr().out
    files = set(snapshot(data))
    # --overwrite replaces the file training reads, in its name; the trigger word a tag repeats is written once
    assert main(["caption", str(data), "--caption-model", str(tagger), "--overwrite", "--trigger-word",
                 "red theme"]) == 0
    assert set(snapshot(data)) == files
    assert (data / "3_colours" / "red.TXT").read_text() == "red theme\n"
    assert (data / "3_colours" / "green.caption").read_text() == "red theme, green theme\n"


def test_dry_run_plans_the_device_and_writes_nothing(tmp_path, blip, capsys):
    data = colour_dataset(tmp_path / "data")
    before = snapshot(data)
    assert main(["caption", str(data), "--caption-model", str(blip), "--dry-run", "--vram", "0.6GB"]) == 0
    out = capsys.readouterr().out
    assert "captioning on the CPU" in out and "4 image(s) to caption" in out and "on the CPU" in out
    assert "the captioner needs about " in out and "3_colours/red.png -> red.txt" in " ".join(out.split())
    assert main(["caption", str(data), "--caption-model", str(blip), "--dry-run", "--vram", "8GB",
                 "--batch-size", "2"]) == 0
    assert "on the GPU" in capsys.readouterr().out
    assert snapshot(data) == before


@pytest.mark.parametrize(("args", "message"), [
    (["{data}"], "--caption-model: name a captioning model"),
    (["{missing}", "--caption-model", "{tagger}"], "DIR: folder not found:"),
    (["{data}", "--caption-model", "{data}"], "is neither a WD14-style tagger"),
    (["{data}", "--caption-model", "{pickled}"], "has no .safetensors weights"),
    (["{data}", "--caption-model", "{tagger}", "--threshold", "2"], "--threshold: 2.0 is not a confidence"),
    (["{data}", "--caption-model", "{tagger}", "--batch-size", "x"], "--batch-size: 'x' is invalid"),
    (["{empty}", "--caption-model", "{tagger}"], "DIR: no images (.png"),
    (["{data}", "--caption-model", "{tagger}", "--batch-size", "0"], "--batch-size: must be at least 1, not 0"),
    (["{data}", "--caption-model", "{tagger}", "--device", "cuda"], "--device cuda: no CUDA GPU here; use --device"),
    (["{data}", "--caption-model", "someone/not-cached"], "--caption-model: someone/not-cached could not be fetched"),
    (["{data}", "--caption-model", "{badtags}"], "is not a tag list with name and category columns"),
])
def test_bad_input_is_one_line(tmp_path, tagger, capsys, args, message):
    data = colour_dataset(tmp_path / "data")
    pickled = tmp_path / "old-model"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02")
    (tmp_path / "empty").mkdir()
    badtags = build_tagger(tmp_path / "bad-tagger")
    (badtags / "selected_tags.csv").write_text("tag_id,label\n0,red_theme\n")
    paths = {"data": data, "missing": tmp_path / "nope", "tagger": tagger, "pickled": pickled, "empty": tmp_path / "empty",
             "badtags": badtags}
    before = snapshot(data)
    assert main(["caption", *(a.format(**paths) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert snapshot(data) == before


def test_a_kohya_ss_project_folder_names_the_folders_to_caption(tmp_path, tagger, capsys):
    project = tmp_path / "proj"
    for folder in ("img/10_ohwx dog", "reg/1_dog", "model", "log"):
        (project / folder).mkdir(parents=True)
        if "_" in folder:
            Image.new("RGB", (96, 96), (1, 2, 3)).save(project / folder / "a.png")
    assert main(["caption", str(project), "--caption-model", str(tagger)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"DIR: no images (.png, .jpg, .jpeg, .webp, .bmp, .jfif, .tif, .tiff, .avif) in {project} or its N_name "
        f"subfolders; its N_name folders are a level down: caption {project / 'img'}")


def test_tagger_input_is_the_wd14_layout():
    image = Image.new("RGB", (40, 20), (200, 100, 10))
    pixels = _tagger_input(image, TAGGER_SIDE)
    assert pixels.shape == (TAGGER_SIDE, TAGGER_SIDE, 3) and pixels.dtype == np.float32
    assert pixels.flags["C_CONTIGUOUS"]
    assert tuple(pixels[TAGGER_SIDE // 2, TAGGER_SIDE // 2]) == (10, 100, 200)  # BGR, 0-255
    assert tuple(pixels[0, TAGGER_SIDE // 2]) == (255, 255, 255)  # padded to a square with white


def test_weight_bytes_count_the_dtype_the_model_runs_in(tmp_path, blip):
    from safetensors.torch import load_file

    files = sorted(blip.glob("*.safetensors"))
    stored = weight_bytes(files, runs_in_half=False)
    assert stored == sum(t.numel() * t.element_size() for p in files for t in load_file(p).values())  # fp32 on disk
    assert weight_bytes(files, runs_in_half=True) == stored // 2


def test_missing_optional_libraries_name_the_extra_to_install(tmp_path, tagger, monkeypatch, capsys):
    """Without onnxruntime a tagger cannot run; without Gradio there is no UI: one line each, naming the install."""
    data = colour_dataset(tmp_path / "data")
    before = snapshot(data)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an import of a missing package meets
    assert main(["caption", str(data), "--caption-model", str(tagger)]) == 2
    assert "pip install 'lowvram[caption]'" in capsys.readouterr().err
    assert snapshot(data) == before
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["ui", "--port", "1"]) == 2
    assert "pip install 'lowvram[ui]'" in capsys.readouterr().err


def test_a_hub_id_loads_from_the_hugging_face_cache_offline(tmp_path, monkeypatch, capsys):
    """`--caption-model owner/name` offline: huggingface_hub finds the snapshot in its cache (laid out as a download
    leaves it), and the tagger runs from there."""
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    snapshot = cache / "models--someone--wd-tiny" / "snapshots" / ("0" * 40)
    build_tagger(snapshot)
    (cache / "models--someone--wd-tiny" / "refs").mkdir()
    (cache / "models--someone--wd-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    data = colour_dataset(tmp_path / "data")
    assert main(["caption", str(data), "--caption-model", "someone/wd-tiny"]) == 0
    assert captions(data)["red"] == "red theme\n"


def test_a_kohya_dataset_file_captions_its_training_folders_not_its_reg_ones(tmp_path, tagger, capsys):
    data = colour_dataset(tmp_path / "data")
    (tmp_path / "reg").mkdir()
    Image.new("RGB", (96, 96), (220, 40, 40)).save(tmp_path / "reg" / "person.png")
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{data / "3_colours"}"\n'
                       f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "reg"}"\nis_reg = true\n')
    assert main(["caption", str(dataset), "--caption-model", str(tagger)]) == 0
    assert captions(data)["red"] == "red theme\n" and not (tmp_path / "reg" / "person.txt").exists()
    out = capsys.readouterr().out
    assert "skipped data/3_colours/broken.jpg: " in out and "wrote 4 caption(s); kept 1 existing" in out
    # its caption_extension is the one written, as kohya reads it (written .txt, kohya read none of them)
    (data / "3_colours" / "red.txt").unlink()
    dataset.write_text('[general]\ncaption_extension = ".caption"\n' + dataset.read_text())
    assert main(["caption", str(dataset), "--caption-model", str(tagger)]) == 0
    assert (data / "3_colours" / "red.caption").read_text() == "red theme\n"


def test_a_caption_prefix_given_to_caption_says_where_it_belongs(tmp_path, capsys):
    """kohya_ss's captioning tab writes a prefix into the files; here it joins the captions as they train: it was
    answered "did you mean --caption-model?"."""
    from lowvram.cli import main

    for flag in ("--caption-prefix", "--caption-suffix"):
        assert main(["caption", str(tmp_path), flag, "masterpiece,"]) == 2
        assert (f"unknown option {flag} ({flag} is train's and check-data's: it joins each caption as it trains, the "
                "files left as they are)") in capsys.readouterr().err
