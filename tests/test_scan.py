"""The dataset scan: every bad file named with its reason, odd ones converted, the user's folder never
touched, and a rescan of unchanged files decoding nothing."""

import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from messy_dataset import FOLDER, GOOD, drawn, write_messy_dataset
from PIL import Image
from rich.console import Console

from lowvram.data.buckets import default_buckets
from lowvram.data.folders import ScanOptions
from lowvram.data.image_files import HEIC_CONVERTERS, SUPPORTED, _reads_avif
from lowvram.data.scan import NoUsableImages, open_training_image, scan_dataset
from lowvram.errors import LowvramError

TINY = default_buckets(64, 16)


def tree_state(root):
    """Every path under root with its type, size, mtime, permissions and content hash, plus the root's own."""
    state = {".": (root.stat().st_mtime_ns, root.stat().st_mode)}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[path.relative_to(root).as_posix()] = (path.is_dir(), st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return state


def by_relpath(report):
    return {r.relpath: r for r in report.records}


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "data"
    return root, write_messy_dataset(root)


@pytest.fixture
def count_opens(monkeypatch):
    """Record the sha256 of every image Pillow is asked to open."""
    opened = []
    original = Image.open

    def counting_open(fp, *args, **kwargs):
        data = fp.getvalue() if hasattr(fp, "getvalue") else Path(fp).read_bytes()
        opened.append(hashlib.sha256(data).hexdigest())
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_every_messy_file_is_reported_with_its_reason_or_notes(messy):
    root, expect = messy
    report = scan_dataset(root, TINY)
    records = by_relpath(report)
    assert set(records) == set(expect)  # captions, metadata, dotfiles and unknown files are not images
    for relpath, keyword in expect.items():
        record = records[relpath]
        said = record.reason if not record.usable else "; ".join(record.notes)
        assert keyword in said, (relpath, said)
        if keyword == "":
            assert record.usable and record.notes == (), (relpath, record)
        assert record.path.is_absolute() and record.folder == "messy" and record.repeats == 2
    skipped = {"truncated.jpg", "tiny.png", "panorama.png", "text.png", "empty.jpg", "anim.gif", "really_a_gif.png"}
    assert {r.relpath for r in report.skipped} == {f"{FOLDER}/{name}" for name in skipped}
    assert all(r.bucket is None and r.reason for r in report.skipped)
    assert all(r.bucket is not None and r.reason is None for r in report.usable)
    assert "supported" in records[f"{FOLDER}/anim.gif"].reason and ".png .jpg" in records[f"{FOLDER}/anim.gif"].reason
    assert "40.0:1" in records[f"{FOLDER}/panorama.png"].reason and "128x32" in records[f"{FOLDER}/panorama.png"].reason
    assert (records[f"{FOLDER}/panorama.png"].width, records[f"{FOLDER}/panorama.png"].height) == (8000, 200)
    notes = " | ".join(report.folder_notes)
    assert "misc/" in notes and "0_off/" in notes and "notes.docx" in notes
    assert "metadata.json" not in notes and "DS_Store" not in notes and "._good_1" not in notes
    assert "MACOSX" not in notes  # (it was said to hold N_name folders to train, as --data)
    assert "_latent_cache" not in notes  # (ai-toolkit's: "not named 'N_name'" said to rename it)
    assert f"ignored folder {FOLDER}/nested/ (2 images in it and below do not train): images must sit" in notes
    # Captions: file first line, template (folder label) when missing or empty, latin-1 read as cp1252.
    assert records[f"{FOLDER}/good_1.png"].caption == "a circle in rgb(220, 40, 40)"
    assert records[f"{FOLDER}/empty_caption.png"].caption == "messy"
    assert records[f"{FOLDER}/uncaptioned.png"].caption == "messy"
    assert records[f"{FOLDER}/both.png"].caption == "from the txt"
    assert records[f"{FOLDER}/latin1.png"].caption == "café au lait"
    assert records[f"{FOLDER}/good_1_copy.png"].sha256 == records[f"{FOLDER}/good_1.png"].sha256 != ""
    assert "duplicate" not in " ".join(records[f"{FOLDER}/good_1.png"].notes)  # only the later copy is noted
    assert len(report.usable) >= 4 and all(records[f"{FOLDER}/{name}"].usable for name in GOOD)


def test_converted_images_decode_to_8_bit_rgb_with_the_right_pixels(messy):
    root, _ = messy
    records = by_relpath(scan_dataset(root, TINY))

    def pixels(name, **options):
        image, mask = open_training_image(records[f"{FOLDER}/{name}"], ScanOptions(**options))
        assert image.mode == "RGB"
        return np.asarray(image).astype(int), None if mask is None else np.asarray(mask)

    rotated = records[f"{FOLDER}/rotated.jpg"]
    assert (rotated.width, rotated.height) == (80, 120) and rotated.bucket[0] < rotated.bucket[1]  # upright: portrait
    upright, _ = pixels("rotated.jpg")
    assert upright.shape == (120, 80, 3)
    assert upright[20, 40, 0] > 180 and upright[20, 40, 2] < 80  # red on top: stored left side, turned clockwise
    assert upright[100, 40, 2] > 180 and upright[100, 40, 0] < 80  # blue at the bottom

    cmyk, _ = pixels("cmyk.jpg")
    assert records[f"{FOLDER}/cmyk.jpg"].mode == "CMYK"
    assert cmyk[48, 48, 0] > 200 and cmyk[48, 48, 1] < 60 and cmyk[48, 48, 2] < 60  # red, not inverted

    sixteen, _ = pixels("sixteen.png")
    assert records[f"{FOLDER}/sixteen.png"].mode.startswith("I;16")
    assert abs(sixteen[10, 10, 0] - 128) <= 1 and sixteen[10, 90].tolist() == [255, 255, 255]  # scaled, not clipped

    composited, mask = pixels("rgba.png")
    assert records[f"{FOLDER}/rgba.png"].has_alpha and mask is None
    assert composited[10, 10].tolist() == [255, 0, 0] and composited[10, 90].tolist() == [255, 255, 255]
    on_black, _ = pixels("rgba.png", background=(0, 0, 0))
    assert on_black[10, 90].tolist() == [0, 0, 0]
    kept, mask = pixels("rgba.png", alpha_mask=True)
    assert mask is not None and mask.shape == (96, 96) and mask[10, 10] == 255 and mask[10, 90] == 0
    assert kept[10, 10].tolist() == [255, 0, 0]
    masked = scan_dataset(root, TINY, ScanOptions(alpha_mask=True))
    assert "alpha kept as loss mask" in by_relpath(masked)[f"{FOLDER}/rgba.png"].notes

    for name in ("palette.png", "grey.png", "bitmap.png"):
        image, _ = pixels(name)
        assert image.shape == (96, 96, 3)
    assert pixels("grey.png")[0][48, 48].tolist()[0] == pixels("grey.png")[0][48, 48].tolist()[2] < 200  # the disc


def test_the_dataset_folder_is_never_modified(messy, tmp_path):
    root, _ = messy
    before = tree_state(root)
    index = tmp_path / "cache" / "scan.json"
    report = scan_dataset(root, TINY, index_path=index)
    assert tree_state(root) == before
    for record in report.usable:
        for options in (ScanOptions(), ScanOptions(alpha_mask=True)):
            image, _ = open_training_image(record, options)
            assert image.mode == "RGB" and image.size == (record.width, record.height)
    scan_dataset(root, TINY, index_path=index)  # a rescan with the index
    report.write_json(tmp_path / "report.json")
    assert tree_state(root) == before
    assert index.is_file()


def test_an_index_inside_the_dataset_is_refused(messy):
    root, _ = messy
    before = tree_state(root)
    with pytest.raises(LowvramError, match="inside the dataset"):
        scan_dataset(root, TINY, index_path=root / FOLDER / "index.json")
    assert tree_state(root) == before


def test_json_report_round_trips_with_a_summary(messy, tmp_path):
    root, _ = messy
    report = scan_dataset(root, TINY)
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert json.loads(report.write_json(tmp_path / "out" / "report.json").read_text(encoding="utf-8")) == data
    summary = data["summary"]
    assert summary["images"] == len(report.records) == summary["usable"] + summary["skipped"]
    assert summary["usable"] == len(report.usable) and summary["samples_per_epoch"] == 2 * len(report.usable)
    assert sum(summary["buckets"].values()) == len(report.usable) and "64x64" in summary["buckets"]
    assert {"truncated", "too small", "extreme aspect ratio", "not an image", "empty file",
            "unsupported format"} == set(summary["skipped_by_reason"])
    assert summary["notes"]["duplicate"] == 1
    assert summary["folders"][f"{FOLDER}/"]["skipped"] == len(report.skipped)
    rows = {r["relpath"]: r for r in data["records"]}
    assert rows[f"{FOLDER}/rotated.jpg"]["bucket"] == [48, 80] and rows[f"{FOLDER}/tiny.png"]["bucket"] is None


def test_rescan_with_the_index_decodes_nothing(messy, tmp_path, count_opens):
    root, _ = messy
    index = tmp_path / "cache" / "scan.json"
    first = scan_dataset(root, TINY, index_path=index)
    assert len(count_opens) >= len(first.records) - 2  # the first scan decoded them (not the .gif, not the empty)
    count_opens.clear()
    second = scan_dataset(root, TINY, index_path=index)
    assert count_opens == []
    assert second.records == first.records and second.folder_notes == first.folder_notes
    # Captions are re-read every scan: an edited caption shows without decoding anything.
    (root / FOLDER / "good_1.txt").write_text("an edited caption", encoding="utf-8")
    third = scan_dataset(root, TINY, index_path=index)
    assert count_opens == [] and by_relpath(third)[f"{FOLDER}/good_1.png"].caption == "an edited caption"


def test_a_changed_file_is_the_only_one_decoded_again(messy, tmp_path, count_opens):
    root, _ = messy
    index = tmp_path / "cache" / "scan.json"
    first = by_relpath(scan_dataset(root, TINY, index_path=index))
    changed = root / FOLDER / "good_3.png"
    drawn(size=(100, 90), colour=(1, 2, 3)).save(changed)
    count_opens.clear()
    second = by_relpath(scan_dataset(root, TINY, index_path=index))
    assert count_opens == [hashlib.sha256(changed.read_bytes()).hexdigest()]
    record = second[f"{FOLDER}/good_3.png"]
    assert (record.width, record.height) == (100, 90) and record.sha256 == count_opens[0]
    assert {k: v for k, v in second.items() if k != record.relpath} == {
        k: v for k, v in first.items() if k != record.relpath}


def test_missing_empty_or_hopeless_folders_raise_naming_the_folder(tmp_path):
    with pytest.raises(LowvramError, match="nowhere"):
        scan_dataset(tmp_path / "nowhere", TINY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LowvramError, match="empty"):
        scan_dataset(tmp_path / "empty", TINY)
    bad = tmp_path / "all_bad" / "3_x"
    bad.mkdir(parents=True)
    (bad / "text.png").write_text("not an image")
    Image.new("RGB", (8, 8)).save(bad / "tiny.png")
    with pytest.raises(NoUsableImages, match="all_bad") as caught:
        scan_dataset(tmp_path / "all_bad", TINY)
    assert isinstance(caught.value, LowvramError) and "2 skipped" in str(caught.value)
    assert {r.relpath for r in caught.value.report.skipped} == {"3_x/text.png", "3_x/tiny.png"}


def test_images_over_max_pixels_are_skipped_and_rescanned_when_allowed(tmp_path):
    drawn(size=(120, 120)).save(tmp_path / "big.png")
    drawn(size=(96, 96)).save(tmp_path / "fine.png")
    index = tmp_path.parent / f"{tmp_path.name}-index.json"
    records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(max_pixels=10_000), index_path=index))
    assert not records["big.png"].usable and "too large" in records["big.png"].reason
    assert "14400" in records["big.png"].reason and (records["big.png"].width, records["big.png"].height) == (120, 120)
    assert records["fine.png"].usable
    records = by_relpath(scan_dataset(tmp_path, TINY, index_path=index))  # limit raised: now decoded and usable
    assert records["big.png"].usable and records["big.png"].bucket == (64, 64)


def test_a_kohya_ss_project_folder_given_as_data_names_its_img_and_reg_folders(tmp_path):
    """kohya_ss's folder preparation makes img/, reg/, model/ and log/; its users give that folder, not img/."""
    for folder in ("img/10_ohwx dog", "reg/1_dog", "model", "log"):
        (tmp_path / "proj" / folder).mkdir(parents=True)
    drawn(size=(96, 96)).save(tmp_path / "proj" / "img" / "10_ohwx dog" / "a.png")
    drawn(size=(96, 96)).save(tmp_path / "proj" / "reg" / "1_dog" / "b.png")
    project = tmp_path / "proj"
    with pytest.raises(NoUsableImages) as raised:
        scan_dataset(project, TINY)
    assert str(raised.value).endswith(f"or its N_name subfolders; its N_name folders are a level down: give --data "
                                      f"{project / 'img'} --reg-data {project / 'reg'}")
    notes = raised.value.report.folder_notes
    assert (f"skipped folder img/ (1 image in it and below do not train): not named 'N_name' (N = repeats), as "
            f"kohya's convention needs; it holds N_name folders: give --data {project / 'img'} to train them") in notes
    assert any(note.endswith(f"give --reg-data {project / 'reg'} to train them") for note in notes)
    assert "skipped folder model/: not named 'N_name' (N = repeats), as kohya's convention needs" in notes
    # a folder of images beside N_name ones: its name to train it, with its siblings' repeats (not a class images'
    # or held-out folder's: they are no concept)
    (project / "img" / "10_ohwx dog").rename(project / "img" / "5_ohwx dog")
    for folder in ("extras 2", "reg"):
        (project / "img" / folder).mkdir()
        drawn(size=(96, 96)).save(project / "img" / folder / "c.png")
    notes = scan_dataset(project / "img", TINY).folder_notes
    assert ("skipped folder extras 2/ (1 image in it and below do not train): not named 'N_name' (N = repeats), as "
            "kohya's convention needs; rename it '5_extras 2' to train it") in notes, notes
    assert ("skipped folder reg/ (1 image in it and below do not train): not named 'N_name' (N = repeats), as "
            "kohya's convention needs") in notes, notes
    # the repeats typed without kohya's underscore ("10 zoe"): its hint keeps them, not "10_10 zoe"; with spaces
    # before it ("3 _zoe") kohya reads the repeats ("3 "), and so does lowvram (it was skipped, "rename it 10_3 _zoe")
    for folder in ("10 zoe", "3 _zoe"):
        (project / "img" / folder).mkdir()
        drawn(size=(96, 96)).save(project / "img" / folder / "z.png")
    report = scan_dataset(project / "img", TINY)
    assert ("skipped folder 10 zoe/ (1 image in it and below do not train): not named 'N_name' (N = repeats), as "
            "kohya's convention needs; rename it 10_zoe to train it") in report.folder_notes, report.folder_notes
    assert {(r.relpath, r.repeats, r.caption) for r in report.records if "zoe" in r.relpath} == {
        ("3 _zoe/z.png", 3, "zoe")}
    from lowvram.data.folders import (
        n_name_for,  # (numbered folders and dates are no repeats typed: 01 - beach, 1_beach)
    )
    assert [n_name_for(project / "img", name, 5) for name in ("5-zoe beach", "01 - beach", "12.05.2024 shoot")] == [
        "'5_zoe beach'", "'5_01 - beach'", "'5_12.05.2024 shoot'"]
    for folder in ("extras 2", "reg", "10 zoe", "3 _zoe"):
        shutil.rmtree(project / "img" / folder)
    (project / "img" / "5_ohwx dog").rename(project / "img" / "10_ohwx dog")
    (project / "img" / "10_ohwx dog" / "a.png").rename(project / "loose.png")  # a dataset of its own: no hint
    assert "a level down" not in str(pytest.raises(NoUsableImages, scan_dataset, project / "img", TINY).value)


def test_a_reg_folder_beside_the_n_name_folders_given_as_reg_data_is_not_said_to_need_it(tmp_path, capsys):
    """kohya_ss's project layout, reg/ beside the N_name folders: check-data said "skipped folder reg/: ... give
    --reg-data .../reg to train them" to the user who gave just that."""
    from lowvram.cli import main

    project = tmp_path / "proj"
    for folder in ("2_mystyle", "reg/1_painting"):
        (project / folder).mkdir(parents=True)
        drawn(size=(96, 96)).save(project / folder / "a.png")
    assert main(["check-data", str(project), "--model", "tiny", "--reg-data", str(project / "reg"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "regularization: its 1 sample is repeated to 2 each epoch" in said and "give --reg-data" not in said
    assert "1 of 1 images usable, 0 skipped; 2 samples" in said  # (its class images train: none passed over)
    assert main(["check-data", str(project), "--model", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"give --reg-data {project / 'reg'} to train them" in said
    assert "1 of 1 images usable, 0 skipped, 1 more in folders passed over (named above); 2 samples" in said


def test_a_folder_of_images_not_named_n_name_is_named_with_the_fix(tmp_path):
    """A beginner's dataset/ohwx_mug/ said 'skipped folder', then 'no images in dataset'."""
    (tmp_path / "ds" / "ohwx_mug").mkdir(parents=True)
    (tmp_path / "ds" / "notes").mkdir()  # (no images: not the one named)
    drawn().save(tmp_path / "ds" / "ohwx_mug" / "a.png")
    with pytest.raises(NoUsableImages) as raised:
        scan_dataset(tmp_path / "ds", TINY)
    assert str(raised.value).endswith(
        f"or its N_name subfolders; ohwx_mug/ holds images but is not named N_name: rename it to 10_ohwx_mug (each "
        f"image 10 times per epoch), or give --data {tmp_path / 'ds' / 'ohwx_mug'}")
    with pytest.raises(NoUsableImages) as raised:  # class images: kohya's 1_dog, and the option they came by
        scan_dataset(tmp_path / "ds", TINY, flag="--reg-data")
    assert str(raised.value).endswith(
        "rename it to 1_ohwx_mug (kohya's balance repeats class images to match the training images), or give "
        f"--reg-data {tmp_path / 'ds' / 'ohwx_mug'}")
    (tmp_path / "ds" / "dog").mkdir()  # two classes: giving one folder of them would leave the other out
    drawn().save(tmp_path / "ds" / "dog" / "a.png")
    with pytest.raises(NoUsableImages) as raised:
        scan_dataset(tmp_path / "ds", TINY, flag="--reg-data")
    assert str(raised.value).endswith(
        "; dog/, ohwx_mug/ hold images but are not named N_name: rename each as 1_dog (kohya's balance repeats class "
        "images to match the training images), 1_ohwx_mug")
    (tmp_path / "ds" / "tree").mkdir()  # three: each renamed (the third was left out)
    drawn().save(tmp_path / "ds" / "tree" / "a.png")
    with pytest.raises(NoUsableImages) as raised:
        scan_dataset(tmp_path / "ds", TINY)
    assert str(raised.value).endswith("; dog/, ohwx_mug/, tree/ hold images but are not named N_name: rename each as "
                                      "10_dog (each image 10 times per epoch), 10_ohwx_mug, 10_tree")
    # an N_name folder of outfits: its repeats and class words kept (10_casual dropped the trigger, unsaid)
    outfits = tmp_path / "5_mikuchar"
    for outfit in ("casual", "school"):
        (outfits / outfit).mkdir(parents=True)
        drawn().save(outfits / outfit / "a.png")
    with pytest.raises(NoUsableImages) as raised:
        scan_dataset(outfits, TINY)
    assert str(raised.value).endswith("; casual/, school/ hold images but are not named N_name: rename each as "
                                      "'5_mikuchar casual' (each image 5 times per epoch), '5_mikuchar school'")
    assert "skipped folder casual/ (1 image in it and below do not train): not named 'N_name' (N = repeats), as " \
        "kohya's convention needs; rename it '5_mikuchar casual' to train it" in raised.value.report.folder_notes


def test_a_photo_past_pillows_warning_trains_as_in_kohya(tmp_path):
    """90 MP (a 108 MP phone's photos are more): Pillow warns but decodes it, and kohya trains it; only past twice
    that, where Pillow refuses, is an image skipped. Greyscale keeps the test's RAM and time small."""
    Image.new("L", (10_000, 9_000), 200).save(tmp_path / "phone.png", compress_level=1)
    assert 10_000 * 9_000 > Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # never the user's to see
        [record] = scan_dataset(tmp_path, default_buckets(512)).records
        assert record.usable, record.reason
        image, _ = open_training_image(record)
    assert image.mode == "RGB" and (record.width, record.height) == (10_000, 9_000)


def test_an_image_transparent_everywhere_is_skipped_with_alpha_mask_and_noted_without(tmp_path, count_opens):
    clear = drawn(size=(96, 96)).convert("RGBA")
    clear.putalpha(0)
    clear.save(tmp_path / "clear.png")
    faint = drawn(size=(96, 96)).convert("RGBA")
    faint.putalpha(Image.new("L", (96, 96), 0))
    faint.putpixel((5, 5), (0, 0, 0, 1))  # one pixel barely there: it trains, if faintly
    faint.save(tmp_path / "faint.png")
    palette = Image.new("P", (96, 96), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.save(tmp_path / "palette.png", transparency=1)  # a GIF-style see-through colour: every pixel is it
    index = tmp_path.parent / f"{tmp_path.name}-index.json"
    for rescan in (False, True):  # the index keeps the alpha's reading: a rescan decodes nothing and says the same
        count_opens.clear()
        records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(alpha_mask=True), index_path=index))
        assert (count_opens == []) is rescan
        for name in ("clear.png", "palette.png"):
            assert records[name].reason == ("transparent everywhere: with --alpha-mask nothing of it would train; "
                                            "make what should train opaque, or delete it")
        assert records["faint.png"].usable
    records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(), index_path=index))
    assert records["clear.png"].usable and "transparent everywhere: it trains as a plain white image" in \
        records["clear.png"].notes
    assert not any("transparent everywhere" in note for note in records["faint.png"].notes)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_decompression_bomb_warning_and_error_never_escape(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # Pillow warns above 5000 pixels, refuses above 10000
    drawn(size=(64, 64)).save(tmp_path / "ok.png")
    drawn(size=(80, 80)).save(tmp_path / "warns.png")
    drawn(size=(120, 120)).save(tmp_path / "refused.jpg")
    with warnings.catch_warnings():
        # Pillow's warning as an error (not every warning: an earlier test's garbage collected meanwhile, an unclosed
        # event loop's ResourceWarning, would fail this one)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        strict = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(max_pixels=5000)))
        lenient = by_relpath(scan_dataset(tmp_path, TINY))  # our limit above Pillow's warning: decoded quietly
        image, _ = open_training_image(lenient["warns.png"], ScanOptions())
    assert strict["ok.png"].usable and lenient["ok.png"].usable
    assert "too large" in strict["warns.png"].reason and "6400" in strict["warns.png"].reason
    assert lenient["warns.png"].usable and image.size == (80, 80)
    for records in (strict, lenient):
        assert records["refused.jpg"].reason == ("too large: 14400 pixels, over Pillow's decompression-bomb limit of "
                                                 "10000 pixels; downscale it")


def test_small_images_are_upscaled_with_a_note_or_skipped(tmp_path):
    drawn(size=(100, 100)).save(tmp_path / "small.png")
    drawn(size=(800, 800)).save(tmp_path / "large.png")
    drawn(size=(48, 90)).save(tmp_path / "thin.png")  # one side under the 64 px every image needs
    records = by_relpath(scan_dataset(tmp_path, default_buckets(512)))
    assert records["small.png"].usable and "upscaled x5.1 to fill its bucket" in records["small.png"].notes
    assert records["thin.png"].reason.startswith("too small: 48x90, sides must be at least 64 px")
    assert records["large.png"].usable and records["large.png"].notes == (
        f"no caption file: template used: '{tmp_path.name}'",)
    (tmp_path / "large.png.json").write_text('{"tags": ["red", "circle"]}')  # gallery-dl's metadata beside it
    records = by_relpath(scan_dataset(tmp_path, default_buckets(512)))
    said = "no caption file (large.png.json is not read: captions are plain text, as large.txt): template used: "
    assert records["large.png"].notes == (said + f"'{tmp_path.name}'",)
    records = by_relpath(scan_dataset(tmp_path, default_buckets(512), ScanOptions(small_images="skip")))
    assert not records["small.png"].usable and "needs upscaling" in records["small.png"].reason
    assert records["large.png"].usable


def test_folder_conventions_captions_and_trigger_word(tmp_path):
    drawn().save(tmp_path / "top.png")
    (tmp_path / "top.txt").write_text("\n  a caption on line two  \nignored third line\n")
    (tmp_path / "10_sks dog").mkdir()
    drawn().save(tmp_path / "10_sks dog" / "a.jpg")
    (tmp_path / "10_sks dog" / "a.txt").write_text("from the txt")
    (tmp_path / "10_sks dog" / "a.caption").write_text("from the caption")
    drawn().save(tmp_path / "10_sks dog" / "b.png")
    (tmp_path / "10_sks dog" / "nested").mkdir()
    drawn().save(tmp_path / "10_sks dog" / "nested" / "c.png")
    options = ScanOptions(caption_template="a photo of {trigger}")
    report = scan_dataset(tmp_path, TINY, options)
    records = by_relpath(report)
    assert set(records) == {"top.png", "10_sks dog/a.jpg", "10_sks dog/b.png"}
    assert (records["top.png"].caption, records["top.png"].repeats) == ("a caption on line two", 1)
    assert records["top.png"].folder == tmp_path.name
    assert (records["10_sks dog/a.jpg"].repeats, records["10_sks dog/a.jpg"].folder) == (10, "sks dog")
    assert records["10_sks dog/a.jpg"].caption == "from the txt"
    assert records["10_sks dog/b.png"].caption == "a photo of sks dog"
    assert any("nested" in note for note in report.folder_notes)
    assert not any("caption file(s)" in note for note in report.folder_notes)  # each caption has its image
    (tmp_path / "10_sks dog" / "b.png").rename(tmp_path / "10_sks dog" / "b2.png")  # renamed away from its caption
    (tmp_path / "10_sks dog" / "b.txt").write_text("b's caption")
    (tmp_path / "README.txt").write_text("where these came from")  # beside captioned images only: no caption
    notes = scan_dataset(tmp_path, TINY, options).folder_notes
    assert "1 caption file(s) in 10_sks dog/ without an image of the same name, read by none: b.txt (an image " \
           "renamed?)" in notes and not any("README" in note for note in notes)
    (tmp_path / "README.txt").unlink()
    (tmp_path / "10_sks dog" / "b2.png").rename(tmp_path / "10_sks dog" / "b.png")
    (tmp_path / "10_sks dog" / "b.txt").unlink()
    # where none pairs (one file of every caption, or captions named otherwise), the template trained each, unsaid
    solo = tmp_path / "solo" / "5_dog"
    solo.mkdir(parents=True)
    drawn().save(solo / "IMG_0001.png")
    (solo / "captions.txt").write_text("IMG_0001.png: a dog on grass\n")
    (solo / "README.txt").write_text("where these came from")
    assert "1 caption file(s) in 5_dog/ named as no image, so no image there has a caption: captions.txt (each " \
           "image's caption is the file of its name: IMG_0001.txt, or .caption)" in scan_dataset(
               tmp_path / "solo", TINY, options).folder_notes
    # a folder of photos as it is, no N_name, no trigger word: every caption empty, said once
    photos = tmp_path / "solo" / "photos"
    photos.mkdir()
    shutil.move(solo / "IMG_0001.png", photos / "IMG_0001.png")
    bare = [note for note in scan_dataset(photos, TINY).folder_notes if note.startswith("every image trains on")]
    assert bare == [("every image trains on an empty caption (no caption file with text, no --trigger-word, no N_name "
                     "folder): "
                    "the LoRA then changes all the model draws, with no word to call it up; give --trigger-word (e.g. "
                    "ohwx) or a caption file per image")]
    assert not any(note.startswith("every image") for note in scan_dataset(photos, TINY, options).folder_notes)
    # a caption file of another extension, named as the image (--caption-extension .tags): no stray caption said
    (photos / "IMG_0001.tags").write_text("a dog on grass")
    (photos / "notes.txt").write_text("shot in May")
    assert not any("named as no image" in note for note in scan_dataset(
        photos, TINY, ScanOptions(caption_extension=".tags")).folder_notes)
    (photos / "IMG_0001.tags").rename(photos / "IMG_0001.npz")  # (a latent cache's file is no caption of it)
    assert any("named as no image" in note for note in scan_dataset(photos, TINY).folder_notes)
    shutil.rmtree(tmp_path / "solo")
    # kohya reads only the N_name folders: the top-level image trains here, and the scan says so
    assert any("1 image(s) at the top level beside the N_name folders (top.png) train once each per epoch; kohya "
               "leaves them out" in note for note in report.folder_notes)
    # in kohya_ss's img/, a loose image's caption is none, not the word "img"
    (tmp_path / "img" / "10_dog").mkdir(parents=True)
    for name in ("img/loose.png", "img/10_dog/a.png"):
        drawn(size=(64, 64)).save(tmp_path / name)
    records = by_relpath(scan_dataset(tmp_path / "img", TINY))
    assert (records["loose.png"].caption, records["10_dog/a.png"].caption) == ("", "dog")
    records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(caption_extension=".caption", trigger_word="zwx")))
    assert records["10_sks dog/a.jpg"].caption == "zwx, from the caption"
    assert "both .caption and .txt: used .caption" in records["10_sks dog/a.jpg"].notes
    assert records["10_sks dog/b.png"].caption == "zwx"
    # a folder named with the trigger word (kohya's 10_sks dog) keeps its class word, as kohya's caption would
    records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(caption_extension=".caption", trigger_word="sks")))
    assert records["10_sks dog/b.png"].caption == "sks dog"
    (tmp_path / "10_sks dog").rename(tmp_path / "10_sks_dog")  # (the name the check's hint suggests: kept too)
    records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(caption_extension=".caption", trigger_word="sks")))
    assert records["10_sks_dog/b.png"].caption == "sks_dog"
    (tmp_path / "10_sks_dog").rename(tmp_path / "10_sks dog")
    (tmp_path / "10_sks dog" / "a.caption").write_text("cafe\u0301, girl")  # 'é' as 'e' and its accent (NFD)
    records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(caption_extension=".caption",
                                                                   trigger_word="caf\u00e9")))
    assert records["10_sks dog/a.jpg"].caption == "cafe\u0301, girl"  # the trigger word is there: not added again
    # kohya reads only the extension given: kohya_ss presets give '.txt-no' to caption from the folder names
    records = by_relpath(scan_dataset(tmp_path, TINY, ScanOptions(caption_extension=".txt-no")))
    assert records["10_sks dog/a.jpg"].caption == "sks dog" and records["top.png"].caption == tmp_path.name
    assert ("no caption file (its .txt is not read with --caption-extension .txt-no): template used: 'sks dog'"
            in records["10_sks dog/a.jpg"].notes)  # (the first of .txt and .caption there; no name: one kind)
    with pytest.raises(LowvramError, match="small-images"):
        ScanOptions(small_images="stretch")
    with pytest.raises(LowvramError, match="--caption-extension: 'txt' is no file extension; give it with its dot"):
        ScanOptions(caption_extension="txt")
    with pytest.raises(LowvramError, match=r"--caption-extension: '\.JSON' files hold data, not a caption's text; "
                                           "captions are plain text files"):
        ScanOptions(caption_extension=".JSON")  # (a tagger's or gallery-dl's per-image JSON: it trained as raw JSON)


def test_large_jpeg_is_decoded_in_draft_mode_but_still_covers_its_bucket(tmp_path):
    drawn(size=(2048, 1536)).save(tmp_path / "photo.jpg", quality=90)
    buckets = default_buckets(512)
    record = scan_dataset(tmp_path, buckets).records[0]
    image, _ = open_training_image(record, ScanOptions())
    scaled = buckets.place(record.width, record.height).scaled
    assert image.mode == "RGB" and image.width < 2048
    assert image.width >= scaled[0] and image.height >= scaled[1]


def test_progress_bar_and_printed_summary(messy, tmp_path):
    root, expect = messy
    for i in range(60):  # enough files for a progress bar
        drawn(size=(64, 64), colour=(i, 0, 0)).save(root / f"extra_{i:02d}.png")
    out = io.StringIO()
    console = Console(file=out, width=300, force_terminal=True, color_system=None)
    report = scan_dataset(root, TINY, console=console)
    assert len(report.records) == len(expect) + 60
    out.truncate(0)
    report.print_summary(console, verbose=True)
    text = out.getvalue()
    for record in report.skipped:
        assert record.relpath in text and record.reason.split(":")[0] in text
    assert "CMYK -> RGB" in text and "misc/" in text and "64x64" in text
    out.truncate(0)
    out.seek(0)
    report.print_summary(console)  # many noted files: counted, not listed
    assert "usable files have notes" in out.getvalue() and "extra_05.png" not in out.getvalue()


def test_unreadable_file_is_skipped_not_fatal(messy, tmp_path):
    root, _ = messy
    (root / FOLDER / "dangling.png").symlink_to(tmp_path / "moved-away.png")  # unreadable even for root
    index = tmp_path / "index.json"
    records = by_relpath(scan_dataset(root, TINY, index_path=index))
    reason = records[f"{FOLDER}/dangling.png"].reason  # (it said "unreadable: No such file or directory")
    assert reason.startswith(f"a link to {tmp_path / 'moved-away.png'}, which is not there")
    assert str(root / FOLDER / "dangling.png") not in json.loads(index.read_text())["files"]  # retried next time
    drawn().save(tmp_path / "moved-away.png")
    assert by_relpath(scan_dataset(root, TINY, index_path=index))[f"{FOLDER}/dangling.png"].usable


def test_a_file_replaced_with_its_size_and_mtime_kept_is_read_again(messy, tmp_path, count_opens):
    """`cp -p`, rsync -a and unzip give a replaced file its source's mtime, and an uncompressed image of the same
    pixel count has the same size: the index must not hand out the old image's hash (its cached latent)."""
    root, _ = messy
    index = tmp_path / "cache" / "scan.json"
    target = root / FOLDER / "good_3.png"
    drawn(size=(96, 96), colour=(200, 0, 0)).save(target, compress_level=0)
    os.utime(target, ns=(0, 10**18))
    first = by_relpath(scan_dataset(root, TINY, index_path=index))
    replacement = tmp_path / "other.png"
    drawn(size=(96, 96), colour=(0, 0, 200)).save(replacement, compress_level=0)
    assert replacement.stat().st_size == target.stat().st_size
    shutil.copyfile(replacement, target)
    os.utime(target, ns=(0, 10**18))  # what cp -p does after writing
    count_opens.clear()
    second = by_relpath(scan_dataset(root, TINY, index_path=index))
    record = second[f"{FOLDER}/good_3.png"]
    assert record.sha256 == hashlib.sha256(replacement.read_bytes()).hexdigest() != first[record.relpath].sha256


def test_thousands_of_skipped_files_are_tallied_by_reason_unless_verbose(tmp_path):
    """A summary of 2,000 rows buries the rest of it: past 20 skipped files the summary tallies them by reason with
    the first of each; --verbose (and the JSON report) lists each."""
    folder = tmp_path / "data" / "2_many"
    folder.mkdir(parents=True)
    drawn().save(folder / "good.png")
    for i in range(23):
        drawn(size=(40, 40)).save(folder / f"small_{i:02d}.png")
    (folder / "empty.jpg").write_bytes(b"")
    report = scan_dataset(tmp_path / "data", TINY)

    def printed(verbose):
        out = io.StringIO()
        report.print_summary(Console(file=out, width=300), verbose)
        return out.getvalue()

    short, every = printed(False), printed(True)
    assert "24 skipped (lowvram check-data --verbose, or its --report, lists each)" in short
    assert "too small" in short and " 23 " in short and "2_many/small_00.png: too small: 40x40" in short
    assert "empty file" in short and "small_22.png" not in short
    assert all(f"small_{i:02d}.png" in every for i in range(23))


def test_a_jfif_file_is_the_jpeg_windows_browsers_save_and_trains(tmp_path):
    """`.jfif` was refused ('unsupported format: .jfif files can't be read') though Pillow reads it as any JPEG."""
    (tmp_path / "ds").mkdir()
    drawn().save(tmp_path / "ds" / "cat.jfif", "JPEG")
    (tmp_path / "ds" / "cat.txt").write_text("a cat")
    report = scan_dataset(tmp_path / "ds", TINY)
    assert [(r.relpath, r.caption) for r in report.usable] == [("cat.jfif", "a cat")]


def test_a_phones_heic_photo_is_named_and_a_jpeg_named_heic_is_told_to_be_renamed(tmp_path):
    """A student's iPhone photos: HEIC bytes named .jpg were 'not an image: no image decoder recognises its content
    (b'\\x00\\x00\\x00\\x18ftypheic'...)', and a JPEG renamed .heic 'unsupported format', though a rename trains it."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "IMG_2000.jpg").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(200))
    drawn().save(tmp_path / "ds" / "IMG_1234.heic", "JPEG")
    drawn().save(tmp_path / "ds" / "IMG_1235.HEIC", "PNG")
    (tmp_path / "ds" / "IMG_1236.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(200))
    drawn().save(tmp_path / "ds" / "IMG_0001.jpg", "JPEG")
    (tmp_path / "ds" / "web.png").write_bytes(b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf" + bytes(200))  # (no phone's)
    report = scan_dataset(tmp_path / "ds", TINY)
    assert {r.relpath: r.reason for r in report.skipped} == {
        "IMG_2000.jpg": f"unsupported format: it is a HEIC photo (a phone's), whatever its name says; convert it to "
                        f"one of {SUPPORTED} ({HEIC_CONVERTERS})",
        "IMG_1234.heic": "unsupported name: it is a JPEG file named .heic; rename it IMG_1234.jpg",
        "IMG_1235.HEIC": "unsupported name: it is a PNG file named .HEIC; rename it IMG_1235.png",
        # (the Mac's own converter named: it was heif-convert's alone, or no way at all)
        "IMG_1236.heic": f"unsupported format: .heic files can't be read; convert it to one of {SUPPORTED} (on a Mac: "
                         "sips -s format jpeg IMG.HEIC --out IMG.jpg; on Linux: heif-convert; or set the phone to its "
                         "most compatible format)",
        "web.png": "unreadable: an AVIF image whose content its decoder does not take; re-download or re-export it"
                   if _reads_avif() else f"unsupported format: it is an AVIF image, which this Pillow "
                   f"({Image.__version__}) cannot read: pip install -U pillow (11.3 or later reads it), or convert it "
                   f"to one of {SUPPORTED}"}


@pytest.mark.skipif(not _reads_avif(), reason="this Pillow has no AVIF decoder")
def test_an_avif_image_trains_where_pillow_reads_it(tmp_path):
    """A web page's images saved as .avif (Pillow's wheels decode them from 11.3, kohya's with its plugin) were
    skipped as "can't be read"; one named .jpg was "a AVIF file"."""
    (tmp_path / "ds").mkdir()
    drawn().save(tmp_path / "ds" / "web.avif")
    drawn().save(tmp_path / "ds" / "saved.jpg", "AVIF")
    report = scan_dataset(tmp_path / "ds", TINY)
    assert sorted(r.relpath for r in report.usable) == ["saved.jpg", "web.avif"] and not report.skipped
    assert "is an AVIF file despite its .jpg name" in {r.relpath: r for r in report.usable}["saved.jpg"].notes
    image, _ = open_training_image(report.usable[0])
    assert image.mode == "RGB" and image.size == (report.usable[0].width, report.usable[0].height)


def test_a_tiff_of_any_kind_trains_as_onetrainer_trains_it(tmp_path):
    """A scanner's or a painting program's TIFF was refused ("unsupported format: .tif files can't be read"), though
    Pillow reads it and OneTrainer trains it; a second page, or an animated WebP's frames, are said to go unused."""

    (tmp_path / "ds").mkdir()
    base = drawn(size=(120, 90))
    base.convert("CMYK").save(tmp_path / "ds" / "scan.tif", compression="tiff_lzw")
    Image.fromarray((np.arange(90 * 120).reshape(90, 120) * 7 % 65535).astype(np.uint16)).save(
        tmp_path / "ds" / "deep.TIFF")
    other = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # (a WebP makes one frame of two the same)
    base.save(tmp_path / "ds" / "pages.tif", save_all=True, append_images=[other])
    base.save(tmp_path / "ds" / "moving.webp", save_all=True, append_images=[other], duration=50)
    base.save(tmp_path / "ds" / "phone.jpg", "MPO", save_all=True, append_images=[other])  # (a depth map: no frame)
    report = scan_dataset(tmp_path / "ds", TINY)
    assert not report.skipped and {r.relpath for r in report.usable} == {"scan.tif", "deep.TIFF", "pages.tif",
                                                                         "moving.webp", "phone.jpg"}
    notes = {r.relpath: r.notes for r in report.usable}
    assert "CMYK -> RGB" in notes["scan.tif"] and "16-bit -> 8-bit RGB" in notes["deep.TIFF"]
    assert "2 frames (animated, or pages): the first trains" in notes["pages.tif"]
    assert "2 frames (animated, or pages): the first trains" in notes["moving.webp"]
    assert not any("frames" in note for note in notes["phone.jpg"])
    for record in report.usable:
        image, _ = open_training_image(record, ScanOptions())
        assert image.mode == "RGB" and image.size == (120, 90)


def test_a_scan_stopped_part_way_keeps_what_it_read_and_a_log_sees_it_go(tmp_path, count_opens, monkeypatch):
    """Thousands of camera photos take minutes to scan: a log showed nothing meanwhile, and Ctrl-C lost it all."""
    import lowvram.console

    root = tmp_path / "data" / "10_photos"
    root.mkdir(parents=True)
    for n in range(60):
        drawn(colour=(n * 4, 0, 0)).save(root / f"{n:02d}.png")
    index = tmp_path / "cache" / "scan.json"
    opening = Image.open

    def stopped_at_the_31st(fp, *args, **kwargs):
        if len(count_opens) == 31:
            raise KeyboardInterrupt
        return opening(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", stopped_at_the_31st)
    with pytest.raises(KeyboardInterrupt):
        scan_dataset(root.parent, TINY, index_path=index)
    monkeypatch.setattr(Image, "open", opening)
    count_opens.clear()
    monkeypatch.setattr(lowvram.console, "PLAIN_LINE_SECONDS", 0.0)
    piped = io.StringIO()
    assert len(scan_dataset(root.parent, TINY, index_path=index, console=Console(file=piped)).usable) == 60
    assert len(count_opens) == 29  # the rest only
    lines = piped.getvalue().splitlines()
    assert lines[0].startswith("scanning data 1/60 (") and lines[-1].startswith("scanning data 60/60 ("), lines
    assert "/s, " in lines[1] and lines[1].endswith(" left)") and "left" not in lines[-1]


def test_check_data_lists_folders_buckets_and_files_in_number_order(tmp_path, capsys, monkeypatch):
    """Text order listed 10_alice before 1_land and 2_dogs, and bucket 240x64 before 64x208."""
    from lowvram.cli import main

    for folder, size in (("10_alice", (64, 64)), ("1_land", (64, 208)), ("2_dogs", (240, 64))):
        (tmp_path / "d" / folder).mkdir(parents=True)
        for shade in (0, 9):
            Image.new("RGB", size, (shade, 0, 0)).save(tmp_path / "d" / folder / f"{shade}.png")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["check-data", str(tmp_path / "d"), "--model", "tiny"]) == 0
    rows = [line.split("│")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("│ ")]
    assert [row for row in rows if row.endswith("/")] == ["1_land/", "2_dogs/", "10_alice/"]
    assert [row for row in rows if "x" in row and "/" not in row] == ["32x112", "64x64", "112x32"]
    assert [row for row in rows if row.endswith(".png")][::2] == ["1_land/0.png", "2_dogs/0.png", "10_alice/0.png"]


def test_a_copy_under_another_caption_says_which_to_delete(tmp_path):
    """A photo and its download copy "IMG (1).JPG", one captioned by hand: "delete one" stood on the captioned one's
    row, which a user deleted, keeping the copy without its caption."""
    root = tmp_path / "d" / "10_mom"
    root.mkdir(parents=True)
    drawn(colour=(200, 0, 0)).save(root / "IMG_1.png")
    (root / "IMG_1.txt").write_text("mom at the beach")
    shutil.copy(root / "IMG_1.png", root / "IMG_1 (1).png")  # (scanned first: " (" sorts before ".")
    notes = {r.relpath: r.notes for r in scan_dataset(root.parent, TINY).usable}
    assert notes["10_mom/IMG_1.png"][-1] == (
        "duplicate of 10_mom/IMG_1 (1).png, under another caption (there 'mom'): both train, their repeats adding up; "
        "delete 10_mom/IMG_1 (1).png, which has no caption file")
    (root / "IMG_1 (1).txt").write_text("mom, sunset")
    notes = {r.relpath: r.notes for r in scan_dataset(root.parent, TINY).usable}
    assert notes["10_mom/IMG_1.png"][-1].endswith("; delete the one whose caption is not the one you want")


def test_a_linked_copy_is_named_as_one_and_not_to_be_deleted_as_a_duplicate(tmp_path):
    """'delete one' of a symlinked folder's image deleted the one real file (or left a dangling link)."""
    root = tmp_path / "d"
    (root / "10_cat").mkdir(parents=True)
    drawn(colour=(200, 0, 0)).save(root / "10_cat" / "a.png")
    drawn(colour=(0, 200, 0)).save(root / "10_cat" / "b.png")
    (root / "2_cat_link").symlink_to(root / "10_cat")
    shutil.copy(root / "10_cat" / "b.png", root / "10_cat" / "c.png")
    report = scan_dataset(root, TINY)
    notes = {r.relpath: r.notes for r in report.usable}
    assert notes["2_cat_link/a.png"][-1] == ("linked copy of 10_cat/a.png: the same file through a link (both train, "
                                             "their repeats adding up; remove the link, 2_cat_link/a.png, not the "
                                             "file)")
    assert notes["10_cat/c.png"][-1] == "duplicate of 10_cat/b.png (both train, their repeats adding up; delete one)"
    counted = report.summary()["notes"]
    assert (counted["linked copy"], counted["duplicate"]) == (2, 2)
    # the link scanned first: the note on the real file names the link to remove
    (root / "05_alias").mkdir()
    (root / "05_alias" / "a.png").symlink_to(root / "10_cat" / "a.png")
    notes = {r.relpath: r.notes for r in scan_dataset(root, TINY).usable}
    assert notes["10_cat/a.png"][-1] == ("linked copy of 05_alias/a.png: the same file through a link (both train, "
                                         "their repeats adding up; remove the link, 05_alias/a.png, not the file)")


def test_a_notes_kind_is_its_text_before_its_aside_not_cut_at_a_colon_inside_it(tmp_path):
    """The note on a caption read from its .caption file holds a colon in its bracketed aside: the summary (and
    check-data's report.json) keyed it "... as it has no .txt (kohya and OneTrainer read one extension alone"."""
    root = tmp_path / "d"
    (root / "10_cat").mkdir(parents=True)
    drawn(colour=(200, 0, 0)).save(root / "10_cat" / "a.png")
    (root / "10_cat" / "a.caption").write_text("a cat")
    counted = scan_dataset(root, TINY).summary()["notes"]
    assert counted == {"caption read from its .caption file, as it has no .txt": 1}, counted
    from lowvram.data.scan_report import _kind

    assert _kind("[trigger] (ai-toolkit's placeholder) left out: no --trigger-word") == (
        "[trigger] (ai-toolkit's placeholder) left out")  # (an aside within it: not cut there)


def test_the_bucket_table_counts_an_epochs_samples_with_repeats_beside_the_images(tmp_path):
    """kohya's bucket info (and the LoRA's ss_bucket_info) count a bucket's samples with repeats: the table gave
    the images alone, which read as a bucket of 4 where an epoch draws 10."""
    root = tmp_path / "d"
    for folder, sizes in (("3_a", [(64, 64)] * 3), ("1_b", [(96, 64), (96, 64), (64, 64)])):
        (root / folder).mkdir(parents=True)
        for i, size in enumerate(sizes):
            drawn(size=size, colour=(i * 60, len(folder), 0)).save(root / folder / f"{i}.png")
    report = scan_dataset(root, TINY)
    summary = report.summary()
    assert summary["buckets"] == {"64x64": 4, "80x48": 2}
    assert summary["bucket_samples_per_epoch"] == {"64x64": 10, "80x48": 2}
    out = io.StringIO()
    report.print_summary(Console(file=out, width=200, color_system=None))
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.getvalue().splitlines()]
    assert ["64x64", "4", "10"] in rows and ["80x48", "2", "2"] in rows
    # a OneTrainer concept's balancing 0.5: its share rounded once, over its buckets (each rounded alone: 1 + 1)
    from lowvram.cli import main

    (root / "c").mkdir()  # two images in two buckets at 0.5: one sample an epoch, not one per bucket
    for i, size in enumerate([(96, 64), (64, 64)]):
        drawn(size=size, colour=(i * 60, 7, 70)).save(root / "c" / f"{i}.png")
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([{"name": "a", "path": str(root / "3_a"), "balancing": 3},
                                    {"name": "c", "path": str(root / "c"), "balancing": 0.5}]))
    assert main(["check-data", str(concepts), "--model", "tiny", "--report", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert sum(summary["bucket_samples_per_epoch"].values()) == summary["samples_per_epoch"] == 9 + 1


def test_comfyuis_output_folder_captions_no_image_with_its_name(tmp_path):
    """ComfyUI/output's uncaptioned images all trained on the word "output" (its input/ was a container already)."""
    for name in ("output", "input", "mystyle"):
        (tmp_path / name).mkdir()
        drawn(colour=(9, 99, 9)).save(tmp_path / name / "ComfyUI_00001_.png")
        [record] = scan_dataset(tmp_path / name, TINY).usable
        assert record.caption == ("mystyle" if name == "mystyle" else ""), name


def test_bucket_no_upscale_skips_the_aspect_ratios_the_buckets_skip(tmp_path):
    """--bucket-no-upscale's bucket is the image's own shape, which crops nothing: a 60:1 panorama, skipped by
    default, trained in a 3840x64 bucket (kohya's too), 64 px across, without a word."""
    (tmp_path / "ds").mkdir()
    Image.new("RGB", (12000, 200), (10, 20, 30)).save(tmp_path / "ds" / "pano.jpg")
    drawn().save(tmp_path / "ds" / "square.png")
    skipped = scan_dataset(tmp_path / "ds", default_buckets(512, no_upscale=True)).skipped
    assert [(r.relpath, r.reason) for r in skipped] == [(
        "pano.jpg", ("extreme aspect ratio: 12000x200 is 60.0:1 and the widest bucket is 1024x256: cropping to it "
                    "would keep only 7% of the image (its own shape under --bucket-no-upscale, 3840x64, is as "
                    "extreme); crop or split it"))]


def test_no_bucket_says_the_square_crops_that_keep_little(tmp_path):
    """--no-bucket crops every image square: a photo's 3:2 crop is every photo's, unsaid, but a 16:9 or 2:1 image's,
    half of it lost, was said by no note (the note was for buckets alone)."""
    (tmp_path / "ds").mkdir()
    for width, height in ((1920, 1080), (1500, 1000), (1000, 1000)):
        Image.new("RGB", (width, height), (10, 20, 30)).save(tmp_path / "ds" / f"{width}x{height}.jpg")
    report = scan_dataset(tmp_path / "ds", default_buckets(512, min_side=512, max_side=512))
    crops = {r.relpath: [note for note in r.notes if "cropped" in note] for r in report.usable}
    assert crops == {"1000x1000.jpg": [], "1500x1000.jpg": [], "1920x1080.jpg": [
        "cropped to its bucket 512x512, keeping 56% of the image (crop or split it to train all of it)"]}


def test_a_caption_of_nothing_but_commas_is_an_empty_one(tmp_path):
    """A tagger's output emptied by hand (" , ,\\t"): ", ," trained as the caption, the folder's template unused."""
    (tmp_path / "ds" / "5_ohwx cat").mkdir(parents=True)
    for name, text in (("commas", " , ,\t\r\n,\n"), ("tags", "ohwx cat, ,orange,\n")):
        drawn().save(tmp_path / "ds" / "5_ohwx cat" / f"{name}.png")
        (tmp_path / "ds" / "5_ohwx cat" / f"{name}.txt").write_text(text)
    report = scan_dataset(tmp_path / "ds", TINY)
    records = {r.relpath.split("/")[-1]: r for r in report.usable}
    assert records["commas.png"].caption == "ohwx cat"
    assert records["commas.png"].notes == ("caption commas.txt holds nothing but commas: template used: 'ohwx cat'",)
    assert records["tags.png"].caption == "ohwx cat, ,orange,"  # (tags: as written, its empty tag said elsewhere)


def test_the_list_of_usable_files_with_notes_shows_each_ones_bucket(tmp_path):
    """A crop or an upscale noted is to a bucket the list did not show (only a count per bucket, below it)."""
    (tmp_path / "ds").mkdir()
    Image.new("RGB", (70, 100), (10, 20, 30)).save(tmp_path / "ds" / "tall.png")
    out = io.StringIO()
    scan_dataset(tmp_path / "ds", TINY).print_summary(Console(file=out, width=300))
    row = next(line for line in out.getvalue().splitlines() if "tall.png" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][:3] == ["tall.png", "70x100", "48x80"]
