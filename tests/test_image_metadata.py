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
    for image, name in zip(images, names):
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
    assert "metadata.jsonl: the captions of 4 image(s), from its 'text' column" in out
    assert "left out 1 image(s) in ./ that its metadata.jsonl has no caption for: unnamed.png" in out
    assert "1 metadata.jsonl entries name no image in ./" in out
    assert "images/" in out and "not named 'N_name'" not in out  # the folder the metadata names is not skipped

    out_dir = tmp_path / "out"
    assert main(["train", "--model", "tiny", "--data", str(data), "--max-steps", "2", "--output", str(out_dir),
                 "--caption-lines", "each"]) == 0
    meta = safe_open(str(out_dir / "out.safetensors"), framework="pt").metadata()
    tags = json.loads(meta["ss_tag_frequency"])
    assert tags == {"pokemon": {"a red circle": 1, "a yellow square": 1}, "images": {"a white triangle": 1}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"pokemon": {"n_repeats": 1, "img_count": 2},
                                                   "images": {"n_repeats": 1, "img_count": 1}}


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
        "--caption-column; its columns: file_name, text, long_caption")
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


def test_a_dataset_s_split_folder_holding_the_metadata_is_named_in_the_note(tmp_path, capsys):
    """A dataset downloaded from the Hub keeps its images in train/: --data names its parent."""
    data = tmp_path / "download"
    imagefolder(data, ["train/0000.png"])
    jsonl(data / "train" / "metadata.jsonl", [{"file_name": "0000.png", "text": "a red circle"}])
    assert main(["check-data", str(data), "--model", "tiny"]) == 2
    captured = capsys.readouterr()
    assert f"it holds a metadata.jsonl: give --data {data / 'train'} to train its images" in " ".join(
        captured.out.split())


@pytest.mark.parametrize(("name", "content", "message"), [
    ("metadata.jsonl", '{"file_name": "0000.png", "text": "ok"}\n{"file_name": "0001.png", "text": }\n',
     "metadata.jsonl:2: not JSON ("),
    ("metadata.jsonl", '["0000.png", "a caption"]\n', "metadata.jsonl:1: not a JSON object"),
    ("metadata.jsonl", '{"image": "0000.png", "text": "a caption"}\n',
     ("metadata.jsonl: no file_name column naming each row's image (Hugging Face's imagefolder layout); its columns: "
      "image, text")),
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
    assert main(["caption", str(data), "--caption-model", str(build_tagger(tmp_path / "tagger")),
                 "--overwrite", "--character-threshold", "0.4"]) == 0
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.txt")) == ["10_more/0002.txt"]


def test_the_web_ui_shows_a_metadata_files_caption_and_will_not_write_a_caption_file_beside_it(tmp_path):
    from lowvram.ui import dataset as data_panel

    data = tmp_path / "data"
    imagefolder(data, ["images/0000.png", "10_more/0001.png"])
    jsonl(data / "metadata.jsonl", [{"file_name": "images/0000.png", "text": "a red circle"}])
    assert data_panel.read_caption(data, "images/0000.png") == "a red circle"
    with pytest.raises(LowvramError, match=r"^images/0000.png: its caption is in .*metadata.jsonl, which training "):
        data_panel.save_caption(data, "images/0000.png", "edited", tmp_path / "backup")
    assert not (data / "images" / "0000.txt").exists()
    assert data_panel.save_caption(data, "10_more/0001.png", "edited", tmp_path / "backup") == "saved 0001.txt"
    assert data_panel.read_caption(data, "10_more/0001.png") == "edited"
