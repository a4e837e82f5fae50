"""A kohya dataset config (sd-scripts' --dataset_config) given as --data trains as kohya would train it: its
subsets with their repeats, class tokens and is_reg flag, its settings settled subset > dataset > general, and one
line per setting lowvram cannot follow."""

import json
import re
import shutil
from pathlib import Path

import pytest
import tomli_w

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from conftest import assert_one_line_each, image_folders, run_config
from safetensors import safe_open

from lowvram.cli import main
from lowvram.config import fields_by_name
from lowvram.configure import build_config, read_config, read_toml
from lowvram.data.buckets import default_buckets
from lowvram.dataset_files import read_dataset
from lowvram.errors import LowvramError
from lowvram.train.loop import train

# sd-scripts' own example, at the tiny model's size: settings in every place kohya reads them from
DATASET = {
    "general": {"shuffle_caption": True, "caption_extension": ".txt", "keep_tokens": 1, "flip_aug": True},
    "datasets": [{
        "resolution": [64, 64], "batch_size": 2, "enable_bucket": True, "bucket_reso_steps": 16,
        "subsets": [{"image_dir": "imgs/alpha", "num_repeats": 3},
                    {"image_dir": "imgs/beta", "class_tokens": "lvshape thing", "num_repeats": 2, "keep_tokens": 2},
                    {"image_dir": "imgs/reg", "is_reg": True, "class_tokens": "thing"}],
    }],
}


def option(config, name: str):
    return getattr(getattr(config, fields_by_name()[name][0]), name)


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc) if path.suffix == ".json" else tomli_w.dumps(doc))
    return path


def test_a_kohya_dataset_file_trains_its_subsets_with_their_repeats_captions_and_settings(tmp_path, monkeypatch,
                                                                                         capsys):
    monkeypatch.chdir(tmp_path)  # kohya reads image_dir from the current folder
    image_folders(tmp_path)
    write(tmp_path / "dataset.toml", DATASET)
    assert main(["train", "--model", "tiny", "--data", "dataset.toml", "--max-steps", "2", "--output", "out"]) == 0
    captured = capsys.readouterr()
    err, out = " ".join(captured.err.split()), " ".join(captured.out.split())
    assert "dataset.toml: read as a kohya dataset config: 2 image folders, 1 is_reg" in err
    assert "keep_tokens: the subsets differ (1, 2); each trains its images with its own" in err
    # 3 x 3 + 3 x 2 training samples per epoch, and as many regularization ones cycled from reg/
    assert "6 images, 30 per epoch with repeats" in out and "batch 2 x 1" in out
    saved = read_toml(tmp_path / "out" / "out.toml")
    assert saved["data"] == str(tmp_path / "dataset.toml")
    # what the dataset file settles stays the file's: the run's .toml replays it from there, a later edit of it too
    # (the run's copy replaced it, with a note that its own setting was replaced)
    written = {key for section in tomllib.loads((tmp_path / "out" / "out.toml").read_text()).values() for key in section}
    assert not {"resolution", "batch_size", "bucket_step", "shuffle_tags", "keep_tokens", "flip"} & written
    replayed = build_config(read_config(tmp_path / "out" / "out.toml"))
    assert [option(replayed, name) for name in ("resolution", "batch_size", "bucket_step", "shuffle_tags",
                                                "keep_tokens", "flip")] == [64, 2, 16, True, 1, True]
    write(tmp_path / "dataset.toml", DATASET | {"general": DATASET["general"] | {"keep_tokens": 3}})
    capsys.readouterr()
    assert build_config(read_config(tmp_path / "out" / "out.toml")).data.keep_tokens == 3
    assert "replaces its setting" not in capsys.readouterr().err
    meta = safe_open(str(tmp_path / "out" / "out.safetensors"), framework="pt").metadata()
    tags = json.loads(meta["ss_tag_frequency"])
    assert set(tags) == {"alpha", "beta", "reg"}  # every subset, by its folder's name as kohya's keys (is_reg too)
    assert tags["beta"] == {"lvshape thing": 3}  # class_tokens caption the uncaptioned images
    assert json.loads(meta["ss_dataset_dirs"]) == {"alpha": {"n_repeats": 3, "img_count": 3},
                                                   "beta": {"n_repeats": 2, "img_count": 3}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 1, "img_count": 2}}
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"]) == ("15", "2")
    # kohya's ss_datasets, with a dataset file: each dataset's and subset's own settings (the run's keys are the
    # first subset's: beta's keep_tokens 2 was nowhere)
    [dataset] = json.loads(meta["ss_datasets"])
    assert {key: dataset[key] for key in ("batch_size_per_device", "num_train_images", "num_reg_images", "resolution",
                                          "enable_bucket")} == {"batch_size_per_device": 2, "num_train_images": 15,
                                                                "num_reg_images": 2, "resolution": [64, 64],
                                                                "enable_bucket": True}
    assert [(subset["image_dir"], subset["num_repeats"], subset["keep_tokens"], subset["is_reg"], subset["flip_aug"])
            for subset in dataset["subsets"]] == [("alpha", 3, 1, False, True), ("beta", 2, 2, False, True),
                                                  ("reg", 1, 1, True, True)]
    assert dataset["tag_frequency"] == tags


def test_subsets_in_folders_of_one_name_keep_their_own_repeats_in_the_metadata(tmp_path, monkeypatch):
    """a/img (repeats 4) and b/img (repeats 2) were one "img" entry of 6 images at repeats 4: 24 samples where 18
    trained, and the second folder's repeats lost."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    shutil.copytree(tmp_path / "imgs" / "alpha", tmp_path / "a" / "img")
    shutil.copytree(tmp_path / "imgs" / "beta", tmp_path / "b" / "img")
    write(tmp_path / "dataset.toml", {"datasets": [{"resolution": 64, "subsets": [
        {"image_dir": "a/img", "num_repeats": 4}, {"image_dir": "b/img", "num_repeats": 2}]}]})
    assert main(["train", "--model", "tiny", "--data", "dataset.toml", "--max-steps", "1", "--output", "out"]) == 0
    meta = safe_open(str(tmp_path / "out" / "out.safetensors"), framework="pt").metadata()
    assert json.loads(meta["ss_dataset_dirs"]) == {"img": {"n_repeats": 4, "img_count": 3},
                                                   "img (2)": {"n_repeats": 2, "img_count": 3}}
    assert set(json.loads(meta["ss_tag_frequency"])) == {"img", "img (2)"}  # the same keys: tools pair the two
    assert meta["ss_num_train_images"] == "18"


def test_a_kohya_config_naming_a_dataset_file_takes_the_dataset_files_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    write(tmp_path / "dataset.toml", DATASET)
    kohya = {"pretrained_model_name_or_path": "tiny", "dataset_config": "dataset.toml", "resolution": "512,512",
             "train_batch_size": 1, "train_data_dir": "/nowhere", "network_dim": 8}
    values = read_toml(write(tmp_path / "kohya.toml", kohya))
    # in kohya the dataset file wins over the config file's own resolution and batch size
    assert (values["data"], values["resolution"], values["batch_size"]) == ("dataset.toml", 64, 2)
    assert "train_data_dir not used: dataset_config names the images" in " ".join(capsys.readouterr().err.split())
    assert build_config(values).data.data == str(tmp_path / "dataset.toml")


def test_a_setting_some_subsets_leave_out_is_the_kohya_configs_for_them(tmp_path, monkeypatch):
    """kohya fills a subset's gaps from its arguments: kohya's defaults there replaced a kohya config's caption
    settings for the whole run (and its keep_tokens was then refused for want of a shuffle)."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    write(tmp_path / "dataset.toml", {"datasets": [{"resolution": 64, "subsets": [
        {"image_dir": "imgs/alpha"}, {"image_dir": "imgs/beta", "shuffle_caption": False, "caption_dropout_rate": 0.2}
    ]}]})
    kohya = {"pretrained_model_name_or_path": "tiny", "dataset_config": "dataset.toml", "shuffle_caption": True,
             "keep_tokens": 1, "caption_dropout_rate": 0.05}
    config = build_config(read_toml(write(tmp_path / "kohya.toml", kohya)))
    assert (config.data.shuffle_tags, config.data.keep_tokens, config.data.caption_dropout) == (True, 1, 0.05)
    assert [s.settings for s in read_dataset(tmp_path / "dataset.toml").subsets] == [
        None, {"shuffle_tags": False, "caption_dropout": 0.2}]
    # a keep_tokens every subset has alike is no difference (a subset that shuffles nothing keeps it for a dropout)
    write(tmp_path / "dataset.toml", {"general": {"keep_tokens": 1}, "datasets": [{"resolution": 64, "subsets": [
        {"image_dir": "imgs/alpha"}, {"image_dir": "imgs/beta", "shuffle_caption": False}]}]})
    assert not any(note.startswith("keep_tokens") for note in read_dataset(tmp_path / "dataset.toml").notes)
    # a subset that shuffles nothing keeps [general]'s kept tags, for a --tag-dropout from the command line (kohya
    # fills the subset from it): they were 0 there, and its first tag, the trigger, was dropped too
    write(tmp_path / "dataset.toml", {"general": {"keep_tokens": 1, "shuffle_caption": True}, "datasets": [{
        "resolution": 64, "subsets": [{"image_dir": "imgs/alpha"},
                                      {"image_dir": "imgs/beta", "shuffle_caption": False}]}]})
    assert [s.settings for s in read_dataset(tmp_path / "dataset.toml").subsets] == [None, {"shuffle_tags": False}]
    config = build_config(read_toml(write(tmp_path / "kohya.toml", {"pretrained_model_name_or_path": "tiny",
                                                                   "dataset_config": "dataset.toml",
                                                                   "caption_tag_dropout_rate": 0.3})))
    assert (config.data.keep_tokens, config.data.tag_dropout) == (1, 0.3)


def test_a_flag_replaces_the_dataset_files_setting_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    write(tmp_path / "dataset.json", DATASET)  # kohya reads JSON too
    report = tmp_path / "report.json"
    assert main(["check-data", "dataset.json", "--model", "tiny", "--resolution", "128", "--report", str(report)]) == 0
    captured = capsys.readouterr()
    assert "--resolution 128 from the command line replaces its setting (64)" in " ".join(captured.err.split())
    from lowvram.configure import with_dataset_settings  # a switch as its flag gives it ("--bucket False" was said)

    assert with_dataset_settings({"data": str(tmp_path / "dataset.json"), "bucket": False}, "the command line")[
        "bucket"] is False
    assert "--no-bucket from the command line replaces its setting (on)" in capsys.readouterr().err
    summary = json.loads(report.read_text())["summary"]
    assert (summary["usable"], summary["samples_per_epoch"]) == (6, 15)
    assert "128x128" in summary["buckets"] and "64x64" not in summary["buckets"]
    assert "reg/" in captured.out  # the is_reg subset is checked too


def test_a_dataset_file_given_as_data_says_which_of_the_configs_settings_it_replaces(tmp_path, monkeypatch, capsys):
    """A lowvram config's `bucket = false` under `--data dataset.toml` with enable_bucket = true trained buckets,
    unsaid: the file's settings come with the command line that names it."""
    from lowvram.cli import build_parser, train_values

    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    write(tmp_path / "dataset.toml", DATASET)
    (tmp_path / "mine.toml").write_text('[model]\nmodel = "tiny"\n[data]\nbucket = false\n[network]\nrank = 4\n')
    args = build_parser().parse_args(["train", "--config", "mine.toml", "--data", "dataset.toml"])
    assert train_values(args)["bucket"] is True
    assert ("dataset.toml: its settings (--bucket) replace --config mine.toml's --no-bucket, as --data on the command "
            "line brings them; give --no-bucket on the command line to keep it") in " ".join(
        capsys.readouterr().err.split())
    kept = build_parser().parse_args(["train", "--config", "mine.toml", "--data", "dataset.toml", "--no-bucket"])
    assert train_values(kept)["bucket"] is False and "replace --config" not in capsys.readouterr().err
    (tmp_path / "kohya.toml").write_text('pretrained_model_name_or_path = "tiny"\nnetwork_module = "networks.lora"\n'
                                         'resolution = "64,64"\n')  # kohya's: its dataset file wins, as in kohya
    train_values(build_parser().parse_args(["train", "--config", "kohya.toml", "--data", "dataset.toml"]))
    assert "replace --config" not in capsys.readouterr().err  # (it named kohya's defaults as the file's own)


def test_relative_image_folders_are_found_beside_the_file_when_not_in_the_current_folder(tmp_path, monkeypatch):
    image_folders(tmp_path / "project")
    path = write(tmp_path / "project" / "dataset.toml", DATASET)
    monkeypatch.chdir(tmp_path)
    dataset = read_dataset(path)
    assert [(s.folder.name, s.repeats, s.label, s.regularization) for s in dataset.subsets] == [
        ("alpha", 3, "alpha", False), ("beta", 2, "lvshape thing", False), ("reg", 1, "thing", True)]
    assert dataset.root == (tmp_path / "project" / "imgs").resolve()


def test_a_subset_without_class_tokens_captions_its_uncaptioned_images_with_its_folders_class_words(tmp_path):
    """An image_dir named 1_style captioned its images '1_style' (the repeats trained as a word); a folder named
    "10" alone has no class words, and its images' empty caption is said as such; a folder of no N_name ("regflat")
    names no concept: its images train without a caption, as kohya's dataset file trains them (they trained on the
    word "regflat")."""
    from PIL import Image

    for number, name in enumerate(("1_style", "10", "regflat")):
        (tmp_path / name).mkdir()
        Image.new("RGB", (64, 64), (200, number, 30)).save(tmp_path / name / "a.png")
    path = write(tmp_path / "dataset.toml", {"datasets": [{"resolution": 64, "subsets": [
        {"image_dir": str(tmp_path / "1_style")}, {"image_dir": str(tmp_path / "10"), "num_repeats": 2},
        {"image_dir": str(tmp_path / "regflat"), "num_repeats": 3}]}]})
    assert [s.label for s in read_dataset(path).subsets] == ["style", "", "regflat"]
    from lowvram.data.check import scan
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    report = scan(resolve_run(run_config(data=str(path), cache_dir=str(tmp_path / "cache")), NO_GPU), path, None, None)
    notes = {record.relpath: (record.caption, record.notes) for record in report.usable}
    assert notes == {"1_style/a.png": ("style", ("no caption file: template used: 'style'",)),
                     "10/a.png": ("", ("no caption file: template used: an empty caption",)),
                     "regflat/a.png": ("", ("no caption file: template used: an empty caption",))}


def test_what_lowvram_cannot_train_as_kohya_would_is_refused_one_line_each(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    doc = {"general": {"face_crop_aug_range": [2.0, 4.0]},
           "datasets": [{"resolution": 512, "subsets": [{"image_dir": "imgs/alpha", "num_repeats": "ten"},
                                                          {"image_dir": "imgs/missing"}, {"class_tokens": "x"}]},
                        {"resolution": [768, 512], "batch_size": 2,
                         "subsets": [{"image_dir": "imgs/beta", "metadata_file": "meta.json"}]}]}
    with pytest.raises(LowvramError) as error:
        read_dataset(write(tmp_path / "dataset.toml", doc))
    expected = ["subsets[1] num_repeats: 'ten' is not a whole number", ("subsets[2] image_dir: folder not found: "
                "imgs/missing (a relative path is read from the current folder, as kohya reads it)"),
                "datasets[1].subsets[3]: no image_dir", ("resolution: the datasets differ (512 (datasets[1]), "
                "[768, 512] (datasets[2]))"), "subsets[1] metadata_file: file not found: meta.json",
                "face_crop_aug_range:"]
    assert_one_line_each(str(error.value), f"{tmp_path / 'dataset.toml'}: ", expected)
    (tmp_path / "elsewhere").mkdir()  # the file elsewhere: read beside it too, and so said
    with pytest.raises(LowvramError, match=re.escape(f"as kohya reads it, then from {tmp_path / 'elsewhere'})")):
        read_dataset(write(tmp_path / "elsewhere" / "dataset.toml", doc))
    with pytest.raises(LowvramError, match=r"subsets\[1\] num_repeats: 0 repeats would leave its images out"):
        read_dataset(write(tmp_path / "zero.toml",
                           {"datasets": [{"subsets": [{"image_dir": "imgs/alpha", "num_repeats": 0}]}]}))
    with pytest.raises(LowvramError, match="every subset is is_reg = true"):
        read_dataset(write(tmp_path / "reg.toml",
                           {"datasets": [{"subsets": [{"image_dir": "imgs/reg", "is_reg": True}]}]}))
    cropped = {"general": {"resolution": [768, 512], "enable_bucket": False},
               "datasets": [{"subsets": [{"image_dir": "imgs/alpha"}]}]}
    assert main(["plan", "--model", "tiny", "--data", str(write(tmp_path / "crop.toml", cropped)), "--vram", "6GB"]) == 2
    assert ("'[768, 512]' is kohya's width,height; with buckets off (--no-bucket, a kohya file's enable_bucket false "
            "or none) lowvram crops every image square") in capsys.readouterr().err


def test_a_width_and_height_trains_buckets_of_about_its_area(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    wide = write(tmp_path / "wide.toml", {"general": {"resolution": [768, 512], "enable_bucket": True},
                                          "datasets": [{"subsets": [{"image_dir": "imgs/alpha"}]}]})
    assert main(["plan", "--model", "tiny", "--data", str(wide), "--vram", "6GB"]) == 0
    out, err = capsys.readouterr()
    assert "--resolution 768,512 is kohya's width,height: lowvram trains aspect-ratio buckets of about its pixel area, " \
           "those of 632 px square" in err
    assert "tiny SD (random weights) at 632px" in out
    assert (768, 512) in default_buckets(632).shapes and (512, 768) in default_buckets(632).shapes


def test_a_file_that_is_no_dataset_config_or_a_second_reg_source_is_an_error_naming_the_fix(tmp_path, monkeypatch,
                                                                                           capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    training_config = write(tmp_path / "train.toml", {"training": {"max_steps": 10}})
    assert main(["train", "--model", "tiny", "--data", str(training_config)]) == 2
    assert ("is neither a kohya dataset config ([[datasets]] of [[datasets.subsets]]) nor a OneTrainer concepts file "
            "(a JSON list of concepts); a training config (kohya's, OneTrainer's or lowvram's) goes to --config; or "
            "give --data an image folder") in capsys.readouterr().err
    assert main(["train", "--model", "tiny", "--config", str(write(tmp_path / "ds.toml", DATASET))]) == 2
    assert f"--config: {tmp_path / 'ds.toml'} is a kohya dataset config" in capsys.readouterr().err
    (tmp_path / "broken.toml").write_text("[general\n")
    assert main(["check-data", "broken.toml"]) == 2
    assert "--data: broken.toml is not valid TOML" in capsys.readouterr().err
    assert main(["train", "--model", "tiny", "--data", "missing.toml"]) == 2
    assert "--data: file not found: " in capsys.readouterr().err
    write(tmp_path / "dataset.toml", DATASET)
    assert main(["train", "--model", "tiny", "--data", "dataset.toml", "--reg-data", "imgs/reg"]) == 2
    expected = f"--reg-data: {tmp_path / 'dataset.toml'} has is_reg subsets already; drop --reg-data"
    assert expected in capsys.readouterr().err


def test_subsets_that_differ_or_repeat_are_noted_and_settings_lowvram_lacks_listed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    doc = {"general": {"token_warmup_step": 5, "cache_info": True, "caption_prefix": "lvshape, "},
           "datasets": [{"subsets": [{"image_dir": "imgs/alpha", "flip_aug": True, "random_crop": True},
                                     {"image_dir": "imgs/beta", "color_aug": True, "caption_prefix": "other, ",
                                      "caption_suffix": ", from side"},
                                     {"image_dir": "imgs/alpha", "num_repeats": 4}]}]}
    dataset = read_dataset(write(tmp_path / "dataset.toml", doc))
    assert [s.folder.name for s in dataset.subsets] == ["alpha", "beta"]  # kohya ignores a repeated image_dir
    # settings some subsets leave out are each setting subset's own: the others take the run's, as kohya fills
    # them from its arguments (kohya's defaults here replaced a kohya config's for the whole run)
    assert dataset.values == {}
    assert [s.settings for s in dataset.subsets] == [{"flip": True, "crop": "random"}, {"color_jitter": 0.1}]
    # each subset's captions are wrapped in its own prefix and suffix, as kohya wraps them
    assert [(s.caption_prefix, s.caption_suffix) for s in dataset.subsets] == [("lvshape, ", ""),
                                                                              ("other, ", ", from side")]
    notes = " | ".join(dataset.notes)
    assert ("flip_aug: set for alpha alone, each training its images with its own; the other subsets take the run's "
            "(the training config's or the command line's), as kohya fills them from its arguments") in notes
    assert "imgs/alpha is already a subset of this dataset; this second subset of it is left out" in notes
    doc["datasets"][0]["subsets"][2] |= {"is_reg": True}  # (said as what it means: no class images)
    notes = " | ".join(read_dataset(write(tmp_path / "dataset.toml", doc)).notes)
    assert ("imgs/alpha is already a subset of this dataset; this is_reg subset is left out: no class images come "
            "of it (kohya drops it too)") in notes
    assert "not carried over (lowvram has no such setting): token_warmup_step" in notes  # cache_info: quietly
    # alpha's .txt captions: kohya's default caption_extension, .caption, would read none of them
    assert "datasets.subsets[1]: no caption_extension: kohya would read .caption files only" in notes
    assert "datasets.subsets[2]: no caption_extension" not in notes  # beta has no captions to read either way
    # a kohya config's caption_extension is kohya's fallback for the subsets: then nothing to say
    config = tmp_path / "kohya.toml"
    config.write_text(f'pretrained_model_name_or_path = "tiny"\ndataset_config = "{tmp_path / "dataset.toml"}"\n'
                      'caption_extension = ".txt"\nmax_train_steps = 1\n')
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    assert "no caption_extension" not in capsys.readouterr().err
    doc["datasets"][0]["subsets"][0]["caption_extension"] = ".txt"
    assert "no caption_extension" not in " | ".join(read_dataset(write(tmp_path / "dataset.toml", doc)).notes)
    # a folder of kohya's N_name layout moved into a dataset file trains once an epoch there, as in kohya
    kohya_folder = {"datasets": [{"subsets": [{"image_dir": "source/5_lvshape", "caption_extension": ".txt"}]}]}
    assert ("datasets.subsets[1]: image_dir 5_lvshape trains once an epoch, as in kohya: a dataset file reads "
            "num_repeats, not the folder's 5_ (num_repeats = 5 repeats it so)") in read_dataset(
        write(tmp_path / "folder.toml", kohya_folder)).notes
    kohya_folder["datasets"][0]["subsets"][0]["num_repeats"] = 2
    assert not read_dataset(write(tmp_path / "folder.toml", kohya_folder)).notes
    # a misspelt setting is refused, as kohya's schema refuses it: it would train without what it meant to set
    doc["general"] |= {"shuffle_captions": True, "my_own_note": "x"}
    with pytest.raises(LowvramError) as refused:
        read_dataset(write(tmp_path / "dataset.toml", doc))
    assert str(refused.value) == (f"{tmp_path / 'dataset.toml'}: shuffle_captions: no kohya dataset setting is called "
                                  "that; did you mean shuffle_caption?")
    del doc["general"]["shuffle_captions"]  # far from every setting: someone's own, passed over with a note
    notes = read_dataset(write(tmp_path / "dataset.toml", doc)).notes
    assert "not carried over (lowvram has no such setting): my_own_note, token_warmup_step" in notes


def test_a_validation_split_of_one_dataset_holds_out_nothing_of_the_others_so_it_is_refused(tmp_path, monkeypatch):
    """kohya holds out images of the datasets that set validation_split only: one held over every dataset would
    validate on images kohya trains. Its validation_seed is said to give way to --seed."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    doc = {"datasets": [{"validation_split": 0.2, "validation_seed": 7, "subsets": [{"image_dir": "imgs/alpha"}]},
                        {"subsets": [{"image_dir": "imgs/beta"}]}]}
    with pytest.raises(LowvramError) as error:
        read_dataset(write(tmp_path / "dataset.toml", doc))
    assert str(error.value) == (f"{tmp_path / 'dataset.toml'}: validation_split: the datasets differ (0.2 "
                                "(datasets[1]), 0.0 (datasets[2])); lowvram trains one value per run: give one in "
                                "[general], or train each dataset as a run of its own")
    doc["general"] = {"validation_split": 0.2}  # the others' too: one value for the run
    dataset = read_dataset(write(tmp_path / "dataset.toml", doc))
    assert dataset.values["validation_split"] == 0.2
    assert "validation_seed: lowvram holds out the images --seed chooses (the run's seed)" in dataset.notes
    del doc["general"]  # an explicit 0 is kohya's default, which the other dataset has: nothing held out, unsaid
    doc["datasets"][0]["validation_split"] = 0
    dataset = read_dataset(write(tmp_path / "dataset.toml", doc))
    assert not dataset.values.get("validation_split") and not any("validation_seed" in n for n in dataset.notes)


def test_caption_prefixes_and_suffixes_wrap_each_subsets_captions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    write(tmp_path / "dataset.toml", {"datasets": [{"subsets": [
        {"image_dir": "imgs/alpha", "caption_prefix": "masterpiece, ", "caption_suffix": ", from side"},
        {"image_dir": "imgs/beta", "class_tokens": "thing", "caption_prefix": "sks"}]}]})
    report = tmp_path / "report.json"
    assert main(["check-data", "dataset.toml", "--model", "tiny", "--trigger-word", "zkw", "--caption-prefix",
                 "best, ", "--report", str(report)]) == 0
    captions = {r["relpath"]: r["caption"] for r in json.loads(report.read_text())["records"]}
    # the trigger word first where a caption lacks it, then the subset's wrapping, then the run's, each joined
    # with a space as kohya's process_caption joins them (none more after one that ends in a space)
    assert captions["alpha/00_red_circle.png"] == ("best, masterpiece, zkw, lvshape, a red circle on a blue "
                                                   "background , from side")
    assert captions["beta/03_orange_circle.png"] == "best, sks zkw"  # the template: the trigger word stands in


def test_an_is_reg_folder_inside_a_training_folder_is_no_ignored_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = image_folders(tmp_path)
    shutil.move(images / "reg", images / "alpha" / "reg")
    (images / "alpha" / "stray").mkdir()
    write(tmp_path / "dataset.toml", {"datasets": [{"subsets": [
        {"image_dir": "imgs/alpha"}, {"image_dir": "imgs/alpha/reg", "is_reg": True}]}]})
    assert main(["check-data", "dataset.toml", "--model", "tiny"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ignored folder stray/" in out and "ignored folder reg/" not in out


def test_a_fine_tuning_subset_takes_its_captions_from_its_metadata_file(tmp_path, monkeypatch, capsys):
    """kohya's merge_captions_to_metadata JSON: image key (the name without extension) -> caption and tags, joined
    as kohya joins them; only the images it names are read, and their .txt files are not."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)  # alpha/: 00_red_circle, 01_yellow_square, 02_white_triangle, each with a .txt
    metadata = {"00_red_circle": {"caption": "a red circle\na second line", "tags": "red, circle"},
                str(tmp_path / "imgs" / "alpha" / "01_yellow_square.png"): {"tags": "yellow, square"},
                "gone": {"caption": "an image that is not there"}}
    (tmp_path / "meta.json").write_text(json.dumps(metadata), encoding="utf-8-sig")  # (Notepad's BOM: "not JSON")
    write(tmp_path / "dataset.toml", {"datasets": [{"subsets": [
        {"image_dir": "imgs/alpha", "metadata_file": "meta.json", "caption_prefix": "zkw, "}]}]})
    report = tmp_path / "report.json"
    assert main(["check-data", "dataset.toml", "--model", "tiny", "--report", str(report)]) == 0
    captions = {r["relpath"]: r["caption"] for r in json.loads(report.read_text())["records"]}
    assert captions == {"00_red_circle.png": "zkw, a red circle, red, circle",
                        "01_yellow_square.png": "zkw, yellow, square"}
    out = " ".join(capsys.readouterr().out.split())
    assert "left out 1 image(s) in ./ that its metadata_file has no caption for: 02_white_triangle.png" in out
    assert "1 metadata_file entries name no image in ./: gone" in out
    # the web UI's caption editor shows that caption and refuses to write a .txt training would not read (it showed
    # the .txt beside the image, and saved edits there)
    from lowvram.ui import dataset as data_panel

    root = data_panel.images_root("dataset.toml")
    assert data_panel.read_caption(root, "00_red_circle.png", data="dataset.toml") == "a red circle, red, circle"
    before = (tmp_path / "imgs" / "alpha" / "00_red_circle.txt").read_text()
    with pytest.raises(LowvramError, match=r"^00_red_circle.png: its caption is in its subset's metadata_file "
                                           r"\(dataset.toml\), which training reads instead of caption files"):
        data_panel.save_caption(root, "00_red_circle.png", "edited", tmp_path / "backup", data="dataset.toml")
    assert (tmp_path / "imgs" / "alpha" / "00_red_circle.txt").read_text() == before
    (tmp_path / "meta.json").write_text("{not json")
    assert main(["check-data", "dataset.toml", "--model", "tiny"]) == 2
    assert "metadata_file: meta.json is not readable JSON" in capsys.readouterr().err


def test_a_kohya_configs_in_json_is_refused_naming_the_dataset_file_that_reads_it(tmp_path, monkeypatch, capsys):
    """sd-scripts' fine-tuning mode (in_json beside train_data_dir): captions from the JSON, not the folder's
    files. It was dropped with a note, and the images trained on their .txt files or an empty caption."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    metadata = {"00_red_circle": {"caption": "a red circle", "tags": "red, circle"}}
    (tmp_path / "meta.json").write_text(json.dumps(metadata))
    config = {"pretrained_model_name_or_path": "tiny", "train_data_dir": "imgs/alpha", "in_json": "meta.json",
              "dataset_repeats": 3, "max_train_steps": 1}
    write(tmp_path / "kohya.toml", config)
    assert main(["check-data", "--config", "kohya.toml"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ('in_json: kohya\'s fine-tuning mode (captions and tags from meta.json) is read from a dataset file: write '
            'one holding [[datasets]] and [[datasets.subsets]] with image_dir = "imgs/alpha", metadata_file = '
            '"meta.json", num_repeats = 3, and set dataset_config to it') in err
    write(tmp_path / "dataset.toml", {"datasets": [{"subsets": [
        {"image_dir": "imgs/alpha", "metadata_file": "meta.json", "num_repeats": 3}]}]})  # as it says
    write(tmp_path / "kohya.toml", {key: value for key, value in config.items() if key != "train_data_dir"}
          | {"dataset_config": "dataset.toml"})  # (in_json beside it: ignored, as kohya ignores it)
    report = tmp_path / "report.json"
    assert main(["check-data", "--config", "kohya.toml", "--report", str(report)]) == 0
    records = json.loads(report.read_text())["records"]
    assert [(r["relpath"], r["caption"]) for r in records] == [("00_red_circle.png", "a red circle, red, circle")]
    assert "in_json not used: dataset_config names the images" in " ".join(capsys.readouterr().err.split())


def test_kohyas_metadata_file_in_an_image_folder_or_given_as_data_is_named_with_the_dataset_file_reading_it(
        tmp_path, monkeypatch, capsys):
    """A meta_cap.json beside the images was passed over without a word (they trained on the folder's name), and
    `--data meta_cap.json` was called neither a dataset config nor a concepts file."""
    monkeypatch.chdir(tmp_path)
    alpha = image_folders(tmp_path) / "alpha"
    (alpha / "meta_cap.json").write_text(json.dumps({"00_red_circle": {"caption": "a red circle"}}))
    assert main(["check-data", str(alpha), "--model", "tiny"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f'meta_cap.json holds kohya\'s fine-tuning captions, which an image folder\'s scan does not read (its '
            f'images train on their caption files, else their folder\'s name): to train them, give --data a kohya '
            f'dataset file whose [[datasets.subsets]] holds image_dir = "{alpha}" and metadata_file = '
            f'"{alpha / "meta_cap.json"}"') in out
    assert main(["check-data", str(alpha / "meta_cap.json")]) == 2
    assert "meta_cap.json is kohya's fine-tuning metadata (captions by image), which a dataset file names" in (
        capsys.readouterr().err)
    (alpha / "meta_cap.json").write_text(json.dumps({"00_red_circle": {"width": 96}}))  # another tool's JSON
    assert main(["check-data", str(alpha), "--model", "tiny"]) == 0
    assert "fine-tuning" not in capsys.readouterr().out


def test_a_recursive_subset_trains_the_images_of_its_subfolders_as_kohya_does(tmp_path, monkeypatch, capsys):
    """kohya's recursive = true (a phone's date folders under one subset): it was "not carried over", and the images
    below the image_dir did not train."""
    monkeypatch.chdir(tmp_path)
    images = image_folders(tmp_path)  # alpha/ (3 captioned), beta/ (3 not), reg/
    shutil.move(images / "beta", images / "alpha" / "2023-07-14")
    (images / "alpha" / "2023-07-14" / ".git").mkdir()  # (passed over, as the scan passes it over)
    shutil.copy(next((images / "reg").glob("*.png")), images / "alpha" / "2023-07-14" / ".git")
    report = tmp_path / "report.json"
    write(tmp_path / "dataset.toml", {"datasets": [{"subsets": [
        {"image_dir": "imgs/alpha", "recursive": True, "num_repeats": 2, "class_tokens": "ohwx"}]}]})
    assert main(["check-data", "dataset.toml", "--model", "tiny", "--report", str(report)]) == 0
    records = json.loads(report.read_text())["records"]
    assert len(records) == 6 and all(r["repeats"] == 2 for r in records)
    assert {r["caption"] for r in records if r["relpath"].startswith("2023-07-14/")} == {"ohwx"}
    assert "not carried over" not in capsys.readouterr().err
    write(tmp_path / "dataset.toml", {"datasets": [{"subsets": [{"image_dir": "imgs/alpha", "recursive": "yes"}]}]})
    assert main(["check-data", "dataset.toml", "--model", "tiny"]) == 2
    assert "recursive: 'yes' is no switch" in capsys.readouterr().err
    write(tmp_path / "dataset.toml", {"datasets": [{"subsets": [{"image_dir": "imgs/alpha"}]}]})  # without: its own
    assert main(["check-data", "dataset.toml", "--model", "tiny", "--report", str(report)]) == 0
    assert len(json.loads(report.read_text())["records"]) == 3


def test_a_keep_tokens_separator_keeps_each_captions_own_front_tags(tmp_path, monkeypatch):
    """kohya's keep_tokens_separator from a dataset file: captions written "front ||| rest" keep their front tags
    in place whatever their number, and are trained without the separator."""
    monkeypatch.chdir(tmp_path)
    images = image_folders(tmp_path)
    (images / "alpha" / "00_red_circle.txt").write_text("zkw, red ||| circle, blue background")
    write(tmp_path / "dataset.toml", {"general": {"shuffle_caption": True, "keep_tokens_separator": "|||"},
                                      "datasets": [{"subsets": [{"image_dir": "imgs/alpha"}]}]})
    report = tmp_path / "report.json"
    assert main(["check-data", "dataset.toml", "--model", "tiny", "--report", str(report)]) == 0
    records = {r["relpath"]: r for r in json.loads(report.read_text())["records"]}
    assert records["00_red_circle.png"]["caption"] == "zkw, red, circle, blue background"
    assert records["00_red_circle.png"]["kept_tags"] == [2, 0]
    assert records["01_yellow_square.png"]["kept_tags"] is None  # no separator: --keep-tokens decides
    assert main(["check-data", str(images / "alpha"), "--model", "tiny", "--keep-tokens-separator", ","]) == 2
    result = train(run_config(data=str(images / "alpha"), keep_tokens_separator="|||", shuffle_tags=True,
                              max_steps=1, output=str(tmp_path / "out")))
    kept = {s.caption: s.kept_tags for s in result.data.samples}
    assert kept["zkw, red, circle, blue background"] == (2, 0)  # what the training stream varies the tags by


def test_kohyas_wildcards_read_choices_and_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    doc = {"general": {"enable_wildcard": True}, "datasets": [{"subsets": [{"image_dir": "imgs/alpha"}]}]}
    dataset = read_dataset(write(tmp_path / "dataset.toml", doc))
    assert (dataset.values["wildcards"], dataset.values["caption_lines"]) == (True, "each")


def test_an_image_dir_one_level_above_its_n_name_folders_is_pointed_at_them(tmp_path, capsys):
    """A zip unpacked one level deeper than the dataset file's image_dir: 'no images', without the way on."""
    from PIL import Image

    (tmp_path / "nested" / "img" / "10_cat").mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 90, 9)).save(tmp_path / "nested" / "img" / "10_cat" / "a.png")
    path = write(tmp_path / "dataset.toml", {"datasets": [{"resolution": 64, "subsets": [
        {"image_dir": str(tmp_path / "nested")}]}]})
    assert main(["check-data", str(path), "--model", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert ("ignored folder img/ (1 image in it and below do not train): images must sit directly in its image "
            "folder; it holds N_name folders: point the dataset file's image_dir at each of them") in said


def test_subsets_written_with_one_pair_of_brackets_is_named_so(tmp_path, monkeypatch, capsys):
    """`[datasets.subsets]` (a table) under [[datasets]]: 'no [[datasets.subsets]]', beside a subsets section the
    user could see."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    config = tmp_path / "ds.toml"
    config.write_text("[[datasets]]\nresolution = 512\n[datasets.subsets]\nimage_dir = \"data/5_shapes\"\n")
    assert main(["check-data", str(config)]) == 2
    assert ("datasets: [datasets.subsets] is written with one pair of brackets; write [[datasets.subsets]] (two "
            "pairs: a list of subsets, as kohya reads it)") in capsys.readouterr().err


def test_a_subsets_switch_written_as_text_or_a_number_is_refused_as_kohya_refuses_it(tmp_path, monkeypatch, capsys):
    """`shuffle_caption = "false"` was read as on (beside keep_tokens: refused), `flip_aug = "yes"` as on, and
    `flip_aug = 0` refused in other words."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    config = tmp_path / "ds.toml"
    config.write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "imgs/alpha"\nshuffle_caption = "false"\n'
                      'keep_tokens = 1\nflip_aug = 0\n')
    assert main(["check-data", str(config)]) == 2
    err = capsys.readouterr().err
    assert "datasets.subsets[1] shuffle_caption: 'false' is no switch; write true or false, without quotes" in err
    assert "datasets.subsets[1] flip_aug: 0 is no switch; write true or false, without quotes" in err
    # is_reg = "true" trained the class images as training images; enable_bucket = "false" turned buckets on
    config.write_text('[[datasets]]\nenable_bucket = "false"\n[[datasets.subsets]]\nimage_dir = "imgs/alpha"\n'
                      '[[datasets.subsets]]\nimage_dir = "imgs/beta"\nis_reg = "true"\n')
    assert main(["check-data", str(config)]) == 2
    err = capsys.readouterr().err
    assert "datasets.subsets[2] is_reg: 'true' is no switch; write true or false, without quotes" in err
    assert "datasets enable_bucket: 'false' is no switch; write true or false, without quotes" in err
    # a number out of range is said by its subset (it named --keep-tokens, a flag no one gave, of no subset)
    config.write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "imgs/alpha"\n[[datasets.subsets]]\n'
                      'image_dir = "imgs/beta"\nkeep_tokens = 1.5\ncaption_dropout_rate = 5\n')
    assert main(["check-data", str(config)]) == 2
    err = capsys.readouterr().err
    assert "datasets.subsets[2] keep_tokens: 1.5 is no whole number of 0 or more" in err
    assert "datasets.subsets[2] caption_dropout_rate: 5 is no rate from 0 up to 1" in err and "--" not in err


def test_a_training_setting_in_a_dataset_file_is_refused_as_kohya_refuses_it(tmp_path, monkeypatch, capsys):
    """max_train_epochs in a dataset file was "not carried over (lowvram has no such setting)", a setting it has."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    config = tmp_path / "ds.toml"
    config.write_text('[general]\nmax_train_epochs = 10\ncache_latents = true\n[[datasets]]\n[[datasets.subsets]]\n'
                      'image_dir = "imgs/alpha"\n')
    assert main(["check-data", str(config)]) == 2
    err = capsys.readouterr().err
    assert ("max_train_epochs: a training setting, not a dataset file's (kohya refuses it here); give it in the "
            "training config, or as lowvram's --epochs") in err
    assert "cache_latents: a training setting, not a dataset file's (kohya refuses it here); leave it out (" in err


def test_a_datasets_setting_written_in_a_subset_is_refused_as_kohya_refuses_it(tmp_path, monkeypatch, capsys):
    """A subset's resolution (a concept at its own size) was passed over, unsaid: it trained at the dataset's."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    config = tmp_path / "ds.toml"
    config.write_text('[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "imgs/alpha"\n'
                      '[[datasets.subsets]]\nimage_dir = "imgs/beta"\nresolution = 128\nbatch_size = 2\n')
    assert main(["check-data", str(config)]) == 2
    err = capsys.readouterr().err
    assert ("datasets.subsets[2] resolution: a dataset's setting, not a subset's: its subsets share it; move it to the "
            "[[datasets]] entry (or [general]), or make the subset a dataset of its own") in err
    assert "datasets.subsets[2] batch_size: a dataset's setting" in err and "subsets[1]" not in err


def test_a_subsets_caption_prefix_is_no_tag_of_its_captions(tmp_path, monkeypatch):
    """Pony's score tags as a subset's caption_prefix were every tag's most frequent in ss_tag_frequency: kohya
    counts the caption files' tags, before it adds the prefix (a review found the run's own prefix alone left out)."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    doc = {"datasets": [{"resolution": 64, "subsets": [
        {"image_dir": "imgs/alpha", "caption_extension": ".txt", "caption_prefix": "score_9, score_8_up,"}]}]}
    write(tmp_path / "dataset.toml", doc)
    train(run_config(data=str(tmp_path / "dataset.toml"), output=str(tmp_path / "out"), max_steps=1))
    tags = json.loads(safe_open(str(tmp_path / "out" / "out.safetensors"), framework="pt").metadata()[
        "ss_tag_frequency"])["alpha"]
    assert tags and not {"score_9", "score_8_up"} & set(tags), tags


def test_a_folder_in_two_datasets_is_no_link_to_remove(tmp_path, monkeypatch, capsys):
    """The same image_dir at two resolutions, in two [[datasets]]: both train, as in kohya; check-data called each
    image a link to remove."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    config = tmp_path / "ds.toml"
    config.write_text('[[datasets]]\nresolution = 64\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = "imgs/alpha"\n'
                      '[[datasets]]\nresolution = 128\nbatch_size = 1\n[[datasets.subsets]]\n'
                      'image_dir = "imgs/alpha"\n')
    assert main(["check-data", str(config), "--model", "tiny"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "link" not in said and "in another subset of the dataset file too: both train" in said, said


def test_a_dataset_file_given_beside_a_kohya_config_buckets_as_its_general_says(tmp_path, capsys):
    """Hollowstrawberry's notebook writes training_config.toml (no enable_bucket, no dataset_config) and
    dataset_config.toml ([general] enable_bucket = true), run as --config one --data other (kohya's
    --dataset_config): the config's square crop won over the file's buckets, with a note saying the opposite."""
    from PIL import Image

    folder = tmp_path / "img" / "10_x"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "a.png")
    Image.new("RGB", (64, 128)).save(folder / "b.png")
    subsets = {"datasets": [{"subsets": [{"image_dir": str(folder), "num_repeats": 10}]}]}
    (tmp_path / "buckets.toml").write_text(tomli_w.dumps({"general": {"enable_bucket": True, "resolution": 64}}
                                                         | subsets))
    (tmp_path / "square.toml").write_text(tomli_w.dumps({"general": {"resolution": 64}} | subsets))
    (tmp_path / "training.toml").write_text(tomli_w.dumps({"pretrained_model_name_or_path": "tiny",
                                                           "network_dim": 4, "max_train_steps": 1}))
    argv = ["plan", "--config", str(tmp_path / "training.toml"), "--vram", "6GB", "--data"]
    assert main([*argv, str(tmp_path / "buckets.toml")]) == 0
    said = " ".join("".join(capsys.readouterr()).split())
    assert "buckets 48x80 x1, 64x64 x1" in said and "cropped square" not in said
    assert main([*argv, str(tmp_path / "square.toml")]) == 0  # silent there too: kohya's square crop, said
    said = " ".join("".join(capsys.readouterr()).split())
    assert "buckets 64x64 x2" in said and "enable_bucket: not set in the config, so every image is cropped" in said
