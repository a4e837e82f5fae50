"""A dataset file's subsets (kohya) or concepts (OneTrainer) with caption and augmentation settings of their own: the
first training subset's are the run's, and each other subset's images are read, cached, captioned and trained with
its own, as kohya and OneTrainer train them."""

import json
import random
import shutil

import pytest
from conftest import run_config

from lowvram.configure import with_dataset_settings
from lowvram.dataset_files import read_dataset
from lowvram.errors import LowvramError
from lowvram.train.loop import train


def two_folders(tmp_path, sample_data):
    """Two copies of the sample images, each image with a .txt and a .caption file that say which one they are."""
    for name in ("plain", "varied"):
        folder = tmp_path / name
        shutil.copytree(sample_data / "5_lvshape", folder)
        for text in folder.glob("*.txt"):
            text.write_text(f"lvshape, {name}, from txt, {text.stem}\n")
            text.with_suffix(".caption").write_text(f"lvshape, {name}, from caption, {text.stem}\n")
    return tmp_path / "plain", tmp_path / "varied"


def dataset_file(tmp_path, varied: dict) -> str:
    plain, other = tmp_path / "plain", tmp_path / "varied"
    entries = "".join(f"{key} = {json.dumps(value)}\n" for key, value in varied.items())
    (tmp_path / "dataset.toml").write_text(
        "[[datasets]]\nresolution = 64\nbatch_size = 2\nenable_bucket = true\n"
        f'[[datasets.subsets]]\nimage_dir = "{plain}"\ncaption_extension = ".txt"\n'
        f'[[datasets.subsets]]\nimage_dir = "{other}"\n{entries}')
    return str(tmp_path / "dataset.toml")


VARIED = {"flip_aug": True, "shuffle_caption": True, "keep_tokens": 1, "caption_dropout_rate": 0.5}


def test_each_subset_reads_caches_and_captions_its_images_with_its_own_settings(tmp_path, sample_data):
    two_folders(tmp_path, sample_data)
    path = dataset_file(tmp_path, VARIED)  # the second subset leaves caption_extension at kohya's ".caption"
    dataset = read_dataset(tmp_path / "dataset.toml")
    # what one subset sets and the other leaves out is the setting one's own; the other takes the run's (kohya's
    # .caption where nothing sets caption_extension)
    assert dataset.values == {"resolution": 64, "batch_size": 2, "bucket": True}
    assert [s.settings for s in dataset.subsets] == [{"caption_extension": ".txt"}, {
        "flip": True, "shuffle_tags": True, "keep_tokens": 1, "caption_dropout": 0.5}]
    assert dataset.assumed["caption_extension"][0] == ".caption"
    assert ("flip_aug: set for varied alone, each training its images with its own; the other subsets take the run's "
            "(the training config's or the command line's), as kohya fills them from its arguments") in dataset.notes

    config = run_config(**with_dataset_settings({"data": path, "output": str(tmp_path / "out"), "max_steps": 2},
                                                "the test", quiet=True))
    data = train(config).data
    plain = [s for s in data.samples if s.group == "plain"]
    varied = [s for s in data.samples if s.group == "varied"]
    assert len(plain) == len(varied) == 6
    # captions from each subset's own caption files
    assert all(", from txt," in s.caption for s in plain) and all(", from caption," in s.caption for s in varied)
    # a flipped variant cached for the flipped subset only; shuffled caption variants for the shuffled one only
    assert {len(s.latent_keys) for s in plain} == {1} and {len(s.latent_keys) for s in varied} == {2}
    assert {len(s.text_keys) for s in plain} == {1} and min(len(s.text_keys) for s in varied) > 1
    # trained: only the second subset's captions are dropped and shuffled (its first tag kept in front)
    drawn = {name: [data.load([i], random.Random(n)).captions[0] for n in range(40)
                    for i, s in enumerate(data.samples) if s.group == name] for name in ("plain", "varied")}
    assert "" not in drawn["plain"] and set(drawn["plain"]) == {s.caption for s in plain}
    assert 0.3 < drawn["varied"].count("") / len(drawn["varied"]) < 0.7
    shuffled = [c for c in drawn["varied"] if c and c not in {s.caption for s in varied}]
    assert shuffled and all(c.startswith("lvshape, ") for c in shuffled)


def test_check_data_shows_each_folders_own_settings(tmp_path, sample_data, capsys, monkeypatch):
    from lowvram.cli import main

    two_folders(tmp_path, sample_data)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["check-data", dataset_file(tmp_path, {"flip_aug": True, "keep_tokens": 2,
                                                       "shuffle_caption": False})]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if "plain/" in line
            or "varied/" in line}
    assert "flip" not in rows["plain/"] and "caption_extension .txt" in rows["plain/"]
    assert "flip True" in rows["varied/"] and "caption_extension" not in rows["varied/"]
    # its tags stay put, but a --tag-dropout from the command line keeps its first two, as kohya's subset does
    assert "keep_tokens 2" in rows["varied/"]


def test_check_data_shows_a_concepts_own_default_as_the_default(tmp_path, sample_data, capsys, monkeypatch):
    from lowvram.cli import main

    plain, varied = two_folders(tmp_path, sample_data)
    concepts = [{"name": "first", "path": str(varied), "image_variations": 3}, {"name": "second", "path": str(plain)}]
    (tmp_path / "concepts.json").write_text(json.dumps(concepts))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["check-data", str(tmp_path / "concepts.json")]) == 0
    out = capsys.readouterr().out
    assert "latent_variants default" in out and "None" not in out


def test_a_subsets_own_setting_out_of_range_is_refused_naming_the_subset(tmp_path, sample_data):
    two_folders(tmp_path, sample_data)
    path = dataset_file(tmp_path, {"caption_dropout_rate": 1.5})
    with pytest.raises(LowvramError) as error:
        with_dataset_settings({"data": path}, "the test", quiet=True)
    assert str(error.value) == (f"{path}: datasets.subsets[2] caption_dropout_rate: 1.5 is no rate from 0 up to 1 (1 "
                                "itself would leave out all)")  # (by the file's own words, as its switches)


def test_a_subsets_own_alpha_mask_keeps_its_transparency_as_a_loss_mask(tmp_path, sample_data):
    from PIL import Image

    _, varied = two_folders(tmp_path, sample_data)
    for folder in (tmp_path / "plain", varied):
        for png in sorted(folder.glob("*.png")):
            image = Image.open(png).convert("RGBA")
            image.putalpha(0 if png.name == "00_red_circle.png" else 128)  # the first see-through everywhere
            image.save(png)
    path = dataset_file(tmp_path, {"alpha_mask": True})
    # --unmasked-weight needs masks: the subset's own alpha masks are masks
    config = run_config(**with_dataset_settings({"data": path, "output": str(tmp_path / "out"), "max_steps": 1,
                                                 "unmasked_weight": 0.1}, "the test", quiet=True))
    data = train(config).data
    masked = {s.group: data.latent_store.load(s.latent_keys[0]).get("mask") is not None for s in data.samples}
    assert masked == {"plain": False, "varied": True}
    trained = {(s.group, s.caption.split(", ")[-1]) for s in data.samples}
    assert ("plain", "00_red_circle") in trained and ("varied", "00_red_circle") not in trained  # nothing would train


def test_a_onetrainer_concepts_own_augmentation_and_tag_settings(tmp_path, sample_data):
    concepts = [{"name": "first", "path": str(sample_data / "5_lvshape")},
                {"name": "second", "path": str(sample_data / "5_lvshape"),
                 "image": {"enable_random_flip": False, "enable_crop_jitter": False},
                 "text": {"enable_tag_shuffling": True, "keep_tags_count": 2}}]
    (tmp_path / "concepts.json").write_text(json.dumps(concepts))
    dataset = read_dataset(tmp_path / "concepts.json")
    assert (dataset.values["flip"], dataset.values["crop"], dataset.values["shuffle_tags"]) == (True, "random", False)
    assert "keep_tokens" not in dataset.values  # OneTrainer's default of one kept tag moves nothing unshuffled
    assert [s.settings for s in dataset.subsets] == [
        None, {"flip": False, "crop": "center", "shuffle_tags": True, "keep_tokens": 2}]
    assert "shuffle_tags: the concepts differ (False, True); each trains its images with its own" in dataset.notes


def test_a_onetrainer_prior_concept_keeps_its_own_settings_and_is_refused_what_training_ones_are(tmp_path,
                                                                                                 sample_data):
    concepts = [{"name": "subject", "path": str(sample_data / "5_lvshape"), "text": {"enable_tag_shuffling": True},
                 "concept_stats": {"image_count": 6}},  # OneTrainer's cached counts: no setting to carry over
                {"name": "class", "path": str(sample_data / "5_lvshape"), "type": "PRIOR_PREDICTION",
                 "image": {"enable_random_flip": False}}]
    (tmp_path / "concepts.json").write_text(json.dumps(concepts))
    dataset = read_dataset(tmp_path / "concepts.json")
    prior = [s for s in dataset.subsets if s.regularization]
    assert prior and prior[0].settings == {"flip": False, "shuffle_tags": False}
    assert not any("not carried over" in note for note in dataset.notes)
    # (the prior concept's tags stay put: the tag OneTrainer keeps by default keeps nothing there, so no note)
    assert [note.split(":")[0] for note in dataset.notes if "differ" in note] == ["flip", "shuffle_tags"]
    concepts[1]["image"]["enable_random_rotate"] = True
    (tmp_path / "concepts.json").write_text(json.dumps(concepts))
    with pytest.raises(LowvramError, match=r"concepts\[2\] \(class\) image.enable_random_rotate"):
        read_dataset(tmp_path / "concepts.json")


def test_flags_set_the_runs_value_and_say_which_subsets_keep_their_own(tmp_path, sample_data, capsys):
    from lowvram.cli import main

    two_folders(tmp_path, sample_data)
    path = dataset_file(tmp_path, {"flip_aug": True})
    text = (tmp_path / "dataset.toml").read_text()
    (tmp_path / "dataset.toml").write_text("[general]\nshuffle_caption = true\nkeep_tokens = 1\n" + text)
    # --no-shuffle-tags leaves the file's kept tags nothing to keep in place: no error about a flag not given
    assert main(["check-data", path, "--no-flip", "--no-shuffle-tags"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "--no-flip from the command line is the run's; varied (on) keeps its own from the file" in err
    # one that sets what the flag gives keeps nothing of its own (it named --shuffle-tags for --no-shuffle-tags, and
    # said the folder kept its own where the flag made it the run's)
    assert main(["check-data", path, "--flip"]) == 0
    assert "is the run's" not in capsys.readouterr().err


def test_a_resolution_flag_over_kohyas_several_resolutions_trains_each_once(tmp_path, sample_data, capsys):
    from lowvram.configure import with_dataset_settings as settings_of

    subset = f'[[datasets.subsets]]\nimage_dir = "{sample_data / "5_lvshape"}"\n'
    path = tmp_path / "multires.toml"
    path.write_text("".join(f"[[datasets]]\nresolution = {side}\n{subset}" for side in (128, 96, 64)))
    values = settings_of({"data": str(path), "resolution": 64}, "the command line")
    assert (values["resolution"], values["extra_resolutions"]) == (64, "96")
    assert "--resolution 64 from the command line is one of its resolutions already" in capsys.readouterr().err
    run_config(**values)  # not refused as "--extra-resolutions: 64 is --resolution already"
    from lowvram.cli import main

    assert main(["check-data", str(path), "--model", "tiny", "--resolution", "64"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "each image trains at 64 px, 96 px: 12 samples per epoch with repeats" in out


def test_datasets_at_other_resolutions_with_a_missing_folder_say_only_that(tmp_path, sample_data):
    (tmp_path / "two.toml").write_text(
        f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{sample_data / "5_lvshape"}"\n'
        f'[[datasets]]\nresolution = 128\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "gone"}"\n')
    with pytest.raises(LowvramError) as error:
        read_dataset(tmp_path / "two.toml")
    missing = f"{tmp_path / 'two.toml'}: datasets[2].subsets[1] image_dir: folder not found: {tmp_path / 'gone'}"
    assert str(error.value).splitlines() == [missing]  # not also "the datasets differ" in resolution
