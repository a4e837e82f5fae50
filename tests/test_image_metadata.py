"""A folder laid out as Hugging Face's imagefolder (the diffusers example scripts' --train_data_dir): its
metadata.jsonl or metadata.csv names each image and its caption, and training reads those captions, not the folder's
name; a file lowvram cannot read is refused in one line naming it."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from lowvram.cli import main
from lowvram.data.sample import write_sample_dataset
from lowvram.errors import LowvramError


def imagefolder(root: Path, names: list[str]) -> list[Path]:
    """The sample dataset's images copied to `names` under `root` (in subfolders where a name has them), without
    their caption files."""
    images = sorted((write_sample_dataset(root.parent / "source") / "5_lvshape").glob("*.png"))
    copied = []
    for image, name in zip(images, names, strict=False):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        copied.append(Path(shutil.copy(image, root / name)))
    return copied


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def captions_of(report: Path) -> dict[str, str]:
    return {r["relpath"]: r["caption"] for r in json.loads(report.read_text())["records"] if r["usable"]}


def test_a_metadata_jsonl_captions_the_images_it_names_and_trains_them(tmp_path, capsys):
    data = tmp_path / "pokemon"
    imagefolder(data, ["0000.png", "0001.png", "images/0002.png", "unnamed.png"])
    (data / "0000.txt").write_text("a caption file the metadata overrides")
    jsonl(data / "metadata.jsonl", [{"file_name": "0000.png", "text": "a red circle"},
                                    {"file_name": "0001.png", "text": ["a yellow square", "a second caption"]},
                                    {"file_name": "images/0002.png", "text": "a white triangle"},
                                    {"file_name": "gone.png", "text": "an image that is not there"}])
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    assert captions_of(report) == {"0000.png": "a red circle", "0001.png": "a yellow square",
                                   "images/0002.png": "a white triangle"}
    out = " ".join(capsys.readouterr().out.split())
    assert ("metadata.jsonl: the captions of 4 image(s), from its 'text' column; its captions are read, not the 1 "
            "caption file(s) beside those images") in out
    assert "left out 1 image(s) in ./ that its metadata.jsonl has no caption for: unnamed.png" in out
    assert "1 metadata.jsonl entries name no image in ./: gone.png" in out
    assert "images/" in out and "not named 'N_name'" not in out  # the folder the metadata names is not skipped

    out_dir = tmp_path / "out"
    assert main(["train", "--model", "tiny", "--data", str(data), "--max-steps", "2", "--output", str(out_dir),
                 "--caption-lines", "each"]) == 0
    meta = safe_open(str(out_dir / "out.safetensors"), framework="pt").metadata()
    tags = json.loads(meta["ss_tag_frequency"])
    # (each of an image's caption lines trains, and is counted: its second line too)
    assert tags == {"pokemon": {"a red circle": 1, "a yellow square": 1, "a second caption": 1},
                    "images": {"a white triangle": 1}}
    # a --caption-prefix (Pony's score tags) or suffix is no tag of the captions, as kohya counts them
    assert main(["train", "--model", "tiny", "--data", str(data), "--max-steps", "1", "--output", str(out_dir),
                 "--caption-lines", "each", "--caption-prefix", "score_9, score_8_up,", "--caption-suffix", ", end",
                 "--overwrite"]) == 0
    meta = safe_open(str(out_dir / "out.safetensors"), framework="pt").metadata()
    assert json.loads(meta["ss_tag_frequency"]) == tags
    assert json.loads(meta["ss_dataset_dirs"]) == {"pokemon": {"n_repeats": 1, "img_count": 2},
                                                   "images": {"n_repeats": 1, "img_count": 1}}


def test_tag_frequency_counts_every_wildcard_choice_once_per_image(tmp_path, capsys):
    """Only the first choice of "{red|blue} dress" was counted: AUTOMATIC1111's tag list showed no "blue dress"."""
    images = sorted((write_sample_dataset(tmp_path / "source") / "5_lvshape").glob("*.png"))[:3]
    folder = tmp_path / "data" / "5_alice"
    folder.mkdir(parents=True)
    for image, caption in zip(images, ("alice, {red|blue} dress, {red|blue} dress", "alice, hat",
                                       "blue dress, cloud\nBlue Dress, sun")):  # (a line's case: one tag)
        shutil.copy(image, folder)
        (folder / image.name).with_suffix(".txt").write_text(caption)
    out = tmp_path / "out"
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "data"), "--max-steps", "1", "--output",
                 str(out), "--wildcards", "--caption-lines", "each", "--caption-prefix", "photo of"]) == 0
    meta = safe_open(str(out / "out.safetensors"), framework="pt").metadata()
    assert json.loads(meta["ss_tag_frequency"]) == {"5_alice": {  # (no "photo of blue dress": the prefix is none)
        "alice": 2, "red dress": 2, "blue dress": 2, "hat": 1, "cloud": 1, "sun": 1}}
    # check-data --captions lists each as it trains (the first choice alone was listed, and counted)
    capsys.readouterr()
    assert main(["check-data", str(tmp_path / "data"), "--model", "tiny", "--wildcards", "--captions",
                 "--caption-lines", "each"]) == 0
    out = capsys.readouterr().out
    assert "red dress, red dress" in out and "red dress, blue dress" in out and "... and 1 more" in out
    assert "6 distinct tags; most common: alice (2), blue dress (2), red dress (1), hat (1)" in " ".join(out.split())


def test_a_metadata_csv_in_an_n_name_folder_repeats_and_its_caption_column_can_be_named(tmp_path, capsys):
    data = tmp_path / "data"
    imagefolder(data, ["10_shapes/a.png", "10_shapes/b.png", "loose.png", "2_nested/deep/er/c.png"])
    jsonl(data / "2_nested" / "metadata.jsonl", [{"file_name": "deep/er/c.png", "long_caption": "a deep one"}])
    (data / "loose.txt").write_text("a loose image")
    with open(data / "10_shapes" / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerows([["file_name", "text", "long_caption"], ["a.png", "", "a circle, drawn"],
                          ["b.png", "", 'a square, "quoted",\nover two lines']])
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "metadata.csv: no captions in a column named text, caption, prompt; name the one that holds them with "
        "--caption-column; its columns with values: long_caption")
    assert main(["check-data", str(data), "--model", "tiny", "--caption-column", "long_caption",
                 "--report", str(report)]) == 0
    assert captions_of(report) == {"10_shapes/a.png": "a circle, drawn", "10_shapes/b.png": 'a square, "quoted",',
                                   "loose.png": "a loose image", "2_nested/deep/er/c.png": "a deep one"}
    records = json.loads(report.read_text())["records"]
    assert sorted(r["repeats"] for r in records) == [1, 2, 10, 10]
    out = " ".join(capsys.readouterr().out.split())
    assert "10_shapes/metadata.csv: the captions of 2 image(s), from its 'long_caption' column" in out
    assert "2_nested/metadata.jsonl: the captions of 1 image(s), from its 'long_caption' column" in out
    assert "no images in" not in out and "ignored folder" not in out  # the folders on the way to deep/er/
    # a downloader's metadata.csv (tags, rating) beside a tagger's .txt captions: passed over, as kohya passes it
    # (it was refused, its only fix --caption-column tags, which trained its rows' tags and left the others out)
    data = tmp_path / "booru"
    imagefolder(data, ["10_shapes/a.png", "10_shapes/b.png"])
    for image in ("a", "b"):
        (data / "10_shapes" / f"{image}.txt").write_text(f"1girl, {image}")
    with open(data / "10_shapes" / "metadata.csv", "w", newline="", encoding="utf-8") as f:  # (a row of an image
        # deleted since too, as a curated download keeps it: no image, no caption file it could lack; review)
        csv.writer(f).writerows([["file_name", "tags", "rating"], ["a.png", "1girl, smile", "s"],
                                 ["gone.png", "1girl", "e"]])
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    assert captions_of(report)["10_shapes/b.png"] == "1girl, b"
    assert ("10_shapes/metadata.csv: not read, as no column of it is named text, caption, prompt, and caption files "
            "caption its images; to train its captions instead, name their column with --caption-column (its columns "
            "with values: tags, rating)") in " ".join(capsys.readouterr().out.split())
    assert main(["check-data", str(data), "--model", "tiny", "--caption-column", "tags", "--report", str(report)]) == 0
    assert captions_of(report)["10_shapes/a.png"] == "1girl, smile"
    # an imagefolder's own captions in a column of another name, one stray .txt beside its images: still refused
    # (passed over, its other images trained on the folder's name)
    (data / "10_shapes" / "b.txt").unlink()
    jsonl(data / "10_shapes" / "metadata.jsonl", [{"file_name": "a.png", "long_caption": "a circle"},
                                                   {"file_name": "b.png", "long_caption": "a square"}])
    (data / "10_shapes" / "metadata.csv").unlink()
    assert main(["check-data", str(data), "--model", "tiny"]) == 2
    assert "no captions in a column named text, caption, prompt" in capsys.readouterr().err


def test_a_downloaded_dataset_trains_its_train_split(tmp_path, capsys):
    """A dataset downloaded from the Hub keeps its images in train/ (and others in test/): --data names its folder,
    as the diffusers scripts' --train_data_dir does."""
    data = tmp_path / "download"
    imagefolder(data, ["train/0000.png", "train/0001.png", "test/0002.png"])
    (data / "README.md").write_text("---\nlicense: mit\n---\n")
    jsonl(data / "train" / "metadata.jsonl", [{"file_name": "0000.png", "text": "a red circle"},
                                              {"file_name": "0001.png", "text": "a yellow square"}])
    jsonl(data / "test" / "metadata.jsonl", [{"file_name": "0002.png", "text": "a white triangle"}])
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    assert captions_of(report) == {"train/0000.png": "a red circle", "train/0001.png": "a yellow square"}
    out = " ".join(capsys.readouterr().out.split())
    assert "train/ read as the dataset's training images (Hugging Face's train split" in out
    assert "train/metadata.jsonl: the captions of 2 image(s), from its 'text' column" in out
    assert (f"skipped folder test/ (1 image in it and below do not train): not named 'N_name' (N = repeats), as "
            f"kohya's convention needs; it holds a metadata.jsonl, a split held out beside train/: give "
            f"--validation-data {data / 'test'} to score the run on its images") in out  # (was: --data, to train it)


def test_a_root_metadata_file_naming_images_in_n_name_folders_keeps_their_repeats(tmp_path, capsys):
    data = tmp_path / "data"
    imagefolder(data, ["10_x/a.png", "10_x/b.png", "c.png", "photos/d.png", "missing/e.png", "0_off/f.png"])
    (data / "missing" / "e.png").unlink()
    (data / "missing").rmdir()
    jsonl(data / "metadata.jsonl", [{"file_name": "10_x/a.png", "text": "a red circle"},
                                    {"file_name": "10_x/b.png", "text": ""},
                                    {"file_name": "c.png", "text": float("nan")},
                                    {"file_name": "photos/d.png", "text": "a photo"},
                                    {"file_name": "missing/e.png", "text": "gone"},
                                    {"file_name": "0_off/f.png", "text": "a folder of 0 repeats"}])
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    records = {r["relpath"]: r for r in json.loads(report.read_text())["records"]}
    assert {path: (r["caption"], r["repeats"]) for path, r in records.items()} == {
        "10_x/a.png": ("a red circle", 10), "10_x/b.png": ("x", 10), "c.png": ("", 1),
        "photos/d.png": ("a photo", 1)}  # an empty caption: an N_name folder's name, else none (a Hub snapshot's
    assert records["10_x/b.png"]["notes"] == ["empty caption in metadata.jsonl: template used: 'x'"]  # is a hash)
    assert records["c.png"]["notes"] == [
        "empty caption in metadata.jsonl: trains without a caption, as the diffusers scripts do"]
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report), "--trigger-word", "ohwx"]) == 0
    assert {r["relpath"]: r["caption"] for r in json.loads(report.read_text())["records"]}["c.png"] == "ohwx"
    # a class image's empty caption is its class words still, as kohya's and the diffusers scripts' never train
    # one uncaptioned
    reg = tmp_path / "dog"
    imagefolder(reg, ["d1.png"])
    jsonl(reg / "metadata.jsonl", [{"file_name": "d1.png", "text": ""}])
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report), "--reg-data", str(reg)]) == 0
    assert [r["caption"] for r in json.loads(report.read_text())["regularization"]["records"]] == ["dog"]
    out = " ".join(capsys.readouterr().out.split())
    assert "metadata.jsonl names images in folders that are not there: missing/" in out
    assert ("skipped folder 0_off/ (1 image in it and below do not train): 0 repeats, so none of its images trains; "
            "name it 1_off to train them once per epoch") in out and "can't list" not in out


def test_a_hugging_face_dataset_id_as_data_says_how_to_fetch_it(tmp_path, monkeypatch, capsys):
    """The diffusers scripts' --dataset_name habit: "folder not found: ./lambdalabs/naruto-blip-captions" alone."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "tiny", "--data", "lambdalabs/naruto-blip-captions"]) == 2
    assert (f"--data: folder not found: {tmp_path / 'lambdalabs/naruto-blip-captions'}; a Hugging Face dataset's id? "
            "lowvram downloads "
            "none: huggingface-cli download lambdalabs/naruto-blip-captions --repo-type dataset --local-dir "
            "naruto-blip-captions, then --data naruto-blip-captions") in " ".join(capsys.readouterr().err.split())
    (tmp_path / "photos").mkdir()  # a folder of one's own mistyped: no word of the hub
    assert main(["train", "--model", "tiny", "--data", "photos/10_mug"]) == 2
    assert "Hugging Face" not in capsys.readouterr().err
    (tmp_path / "datasets" / "ohwx").mkdir(parents=True)
    assert main(["train", "--model", "tiny", "--data", "dataset/ohwx"]) == 2
    assert "Hugging Face" not in (err := capsys.readouterr().err) and f"did you mean {tmp_path / 'datasets'}?" in err


def test_a_metadata_file_of_another_kind_is_passed_over_with_a_note(tmp_path, capsys):
    """A metadata.csv another tool left (no file_name column): the caption files train, as before."""
    data = tmp_path / "data"
    imagefolder(data, ["10_dog/a.png"])
    (data / "10_dog" / "a.txt").write_text("a dog on grass")
    (data / "10_dog" / "metadata.csv").write_text("filename,prompt,seed\na.png,a dog,42\n")
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    assert captions_of(report) == {"10_dog/a.png": "a dog on grass"}
    assert ("10_dog/metadata.csv: not read (Hugging Face's imagefolder names each image in a file_name column; its "
            "columns: filename, prompt, seed)") in " ".join(capsys.readouterr().out.split())


def test_a_metadata_file_without_file_names_that_would_caption_the_images_is_refused(tmp_path, capsys):
    """Rows of `image` and `text` (no file_name): passed over, every image trained captioned with the folder's name."""
    data = tmp_path / "data"
    imagefolder(data, ["a.png", "b.png"])
    jsonl(data / "metadata.jsonl", [{"image": "a.png", "text": "a red circle"}, {"image": "b.png", "text": "a cat"}])
    assert main(["check-data", str(data), "--model", "tiny"]) == 2
    assert (f"{data / 'metadata.jsonl'}: its 'image' column names the images, and Hugging Face's imagefolder reads "
            "them from a file_name column, which it lacks (its columns: image, text); rename it file_name") in " ".join(
        capsys.readouterr().err.split())
    (data / "a.npz").write_bytes(b"kohya's cached latents")  # no caption
    (data / "a.png.json").write_text("{}")  # a downloader's record
    assert main(["check-data", str(data), "--model", "tiny"]) == 2
    for image in ("a", "b"):  # caption files of another extension (--caption-extension .tags): theirs train
        (data / f"{image}.tags").write_text("a shape")
    assert main(["check-data", str(data), "--model", "tiny", "--caption-extension", ".tags"]) == 0


def test_an_image_in_two_rows_keeps_both_captions_as_lines_and_says_so(tmp_path, capsys):
    """The last row's caption replaced the first's, unsaid (Hugging Face's imagefolder trains both)."""
    data = tmp_path / "data"
    imagefolder(data, ["a.png", "b.png"])
    jsonl(data / "metadata.jsonl", [{"file_name": "a.png", "text": "first caption"}, {"file_name": "b.png",
                                    "text": "a cat"}, {"file_name": "a.png", "text": "second caption"}])
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    assert captions_of(report)["a.png"] == "first caption"  # (the first line, as --caption-lines first reads it)
    from lowvram.data.image_metadata import folder_metadata

    assert folder_metadata(data, None, [], data).captions[data / "a.png"] == "first caption\nsecond caption"
    assert ("metadata.jsonl: a.png in more than one row: their captions are read as the lines of one, as a list is "
            "(the first trains; --caption-lines each draws one each time)") in " ".join(capsys.readouterr().out.split())


def test_a_caption_column_without_a_metadata_file_is_said_unread(tmp_path, capsys):
    data = tmp_path / "data"
    imagefolder(data, ["a.png"])
    (data / "a.txt").write_text("a red circle")
    assert main(["check-data", str(data), "--model", "tiny", "--caption-column", "text"]) == 0
    assert (f"--caption-column text: no metadata.jsonl or metadata.csv in {data} or its N_name folders to read it "
            "from; the captions are the caption files'") in " ".join(capsys.readouterr().out.split())


def test_a_dataset_files_folder_with_a_metadata_file_says_it_is_not_read(tmp_path, capsys):
    """kohya and OneTrainer read a subset's captions from caption files: so does lowvram, and says so."""
    import tomli_w

    data = tmp_path / "hf"
    imagefolder(data, ["0000.png"])
    jsonl(data / "metadata.jsonl", [{"file_name": "0000.png", "text": "a red circle"}])
    (tmp_path / "dataset.toml").write_text(tomli_w.dumps({"datasets": [{"subsets": [{"image_dir": str(data)}]}]}))
    assert main(["check-data", str(tmp_path / "dataset.toml"), "--model", "tiny"]) == 0
    assert (f"{data / 'metadata.jsonl'}: not read for a dataset file's folder, whose captions come from caption "
            f"files; --data {data} reads it") in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("name", "content", "message"), [
    ("metadata.jsonl", '{"file_name": "0000.png", "text": "ok"}\n{"file_name": "0001.png", "text": }\n',
     "metadata.jsonl:2: not JSON ("),
    ("metadata.jsonl", '["0000.png", "a caption"]\n', "metadata.jsonl:1: not a JSON object"),
    ("metadata.jsonl", '{"file_name": "../elsewhere.png", "text": "a caption"}\n',
     "metadata.jsonl:1: file_name '../elsewhere.png' is outside"),
    ("metadata.jsonl", '{"file_name": 7, "text": "a caption"}\n', "metadata.jsonl:1: file_name 7 is not a file name"),
    ("metadata.csv", b"file_name,text\n0000.png,caf\xe9\n", "metadata.csv: not UTF-8 text"),
    ("metadata.parquet", b"PAR1", ("metadata.parquet: lowvram reads a folder's captions from metadata.jsonl or "
                                   "metadata.csv; convert it")),
])
def test_a_metadata_file_lowvram_cannot_read_is_refused_in_one_line_naming_it(tmp_path, capsys, name, content,
                                                                              message):
    data = tmp_path / "data"
    imagefolder(data, ["0000.png", "0001.png"])
    (data / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["check-data", str(data), "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert str(data / name) in err


def test_caption_leaves_the_images_a_metadata_file_captions_alone(tmp_path, capsys):
    """Training reads the metadata file's captions, not caption files: writing .txt files beside them would change
    nothing."""
    from captioners import build_tagger

    data = tmp_path / "data"
    imagefolder(data, ["0000.png", "0001.png", "10_more/0002.png"])
    jsonl(data / "metadata.jsonl", [{"file_name": "0000.png", "text": "a red circle"},
                                    {"file_name": "0001.png", "text": "a yellow square"}])
    tagger = str(build_tagger(tmp_path / "tagger"))
    assert main(["caption", str(data), "--caption-model", tagger, "--overwrite", "--character-threshold", "0.4"]) == 0
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.txt")) == ["10_more/0002.txt"]
    jsonl(data / "metadata.jsonl", [{"file_name": "0000.png", "description": "a red circle"}])
    assert main(["caption", str(data), "--caption-model", tagger, "--dry-run"]) == 2
    assert "name the one that holds them with --caption-column" in capsys.readouterr().err
    assert main(["caption", str(data), "--caption-model", tagger, "--caption-column", "description",
                 "--character-threshold", "0.4", "--overwrite"]) == 0
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.txt")) == ["10_more/0002.txt"]


def test_the_web_ui_shows_a_metadata_files_caption_and_will_not_write_a_caption_file_beside_it(tmp_path):
    from lowvram.ui import dataset as data_panel

    data = tmp_path / "data"
    blob, *_ = imagefolder(tmp_path / "blobs", ["0000.png", "10_more/0001.png", "0002.png"])
    imagefolder(data, ["images/0000.png", "10_more/0001.png", "images/0002.png"])
    (data / "images" / "0000.png").unlink()
    (data / "images" / "0000.png").symlink_to(blob)  # a dataset in the Hub's cache: links into its blobs/
    jsonl(data / "metadata.jsonl", [{"file_name": "images/0000.png", "description": "a red circle"},
                                    {"file_name": "images/0002.png", "description": "a white triangle"}])
    assert data_panel.read_caption(data, "images/0000.png", "description") == "a red circle"
    with pytest.raises(LowvramError, match=r"^images/0000.png: its caption is in a metadata.jsonl above it, which "):
        data_panel.save_caption(data, "images/0000.png", "edited", tmp_path / "backup", "description")
    with pytest.raises(LowvramError, match="name the one that holds them with --caption-column"):
        data_panel.save_caption(data, "images/0002.png", "edited", tmp_path / "backup")
    assert not (data / "images" / "0000.txt").exists() and not (data / "images" / "0002.txt").exists()
    with pytest.raises(LowvramError, match="not inside the dataset folder"):
        data_panel.save_caption(data, "../blobs/0002.png", "edited", tmp_path / "backup")
    linked = tmp_path / "linked"
    linked.symlink_to(data)  # the dataset named through a link (a mounted drive, a Colab shortcut)
    assert data_panel.save_caption(linked, "10_more/0001.png", "edited", tmp_path / "backup", "description") == (
        "saved 0001.txt")
    assert data_panel.read_caption(data, "10_more/0001.png", "description") == "edited"


def test_a_dataset_stored_as_parquet_is_named_with_what_to_do(tmp_path, capsys):
    """The Hub's own format (images inside the file), as a download of lambdalabs/naruto-blip-captions holds it."""
    (tmp_path / "naruto" / "data").mkdir(parents=True)
    (tmp_path / "naruto" / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    assert main(["check-data", str(tmp_path / "naruto"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "; data/train-00000-of-00001.parquet is a dataset stored as parquet, " \
        "which lowvram does not read: save its rows as files first" in err


def test_a_metadata_file_naming_none_of_the_images_is_the_error(tmp_path, capsys):
    data = tmp_path / "data"
    imagefolder(data, ["a.png", "b.png"])
    jsonl(data / "metadata.jsonl", [{"file_name": "x.png", "text": "a red circle"}])
    assert main(["check-data", str(data), "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no image in" in err and "has a row in its metadata file: left out 2 " \
        "image(s) in ./ that its metadata.jsonl has no caption for: a.png, b.png" in err


def test_a_metadata_file_without_any_caption_trains_as_the_diffusers_scripts_or_as_the_template_given(tmp_path):
    data = tmp_path / "data"
    imagefolder(data, ["a.png"])
    (data / "metadata.csv").write_text("file_name,text\na.png,\n")
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    assert captions_of(report) == {"a.png": ""}  # not "data", the folder's name (a Hub snapshot's: a hash)
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report), "--caption-template",
                 "a photo of {filename}"]) == 0
    assert captions_of(report) == {"a.png": "a photo of a"}


def test_the_web_ui_shows_the_caption_training_reads_where_metadata_files_nest(tmp_path):
    """Training reads the top folder's file (an N_name folder's own first): the web UI shows and guards that one."""
    from lowvram.ui import dataset as data_panel

    data = tmp_path / "data"
    imagefolder(data, ["plain/c.png", "10_x/sub/d.png"])
    jsonl(data / "metadata.jsonl", [{"file_name": "plain/c.png", "text": "root c"}])
    jsonl(data / "plain" / "metadata.jsonl", [{"file_name": "c.png", "text": "plain c"}])
    jsonl(data / "10_x" / "metadata.jsonl", [{"file_name": "sub/d.png", "text": "10x d"}])
    jsonl(data / "10_x" / "sub" / "metadata.jsonl", [{"file_name": "d.png", "text": "sub d"}])
    report = tmp_path / "report.json"
    assert main(["check-data", str(data), "--model", "tiny", "--report", str(report)]) == 0
    trained = captions_of(report)
    assert trained == {"plain/c.png": "root c", "10_x/sub/d.png": "10x d"}
    assert {path: data_panel.read_caption(data, path) for path in trained} == trained


def test_a_metadata_files_list_of_captions_is_not_taken_for_a_tag_file(tmp_path, capsys):
    """A caption list in a metadata row is captions to draw among, however short: the tag-a-line note (for a
    downloader's tag file) offered --caption-lines join for it, which would have trained them as one."""
    data = tmp_path / "data"
    imagefolder(data, ["a.png"])
    jsonl(data / "metadata.jsonl", [{"file_name": "a.png", "text": ["red", "round", "circle", "shape", "drawn"]}])
    assert main(["check-data", str(data), "--model", "tiny", "--verbose"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "caption lines: the first of 5 is trained" in out and "look like tags" not in out
