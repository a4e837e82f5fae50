"""A OneTrainer concepts file given as --data trains its enabled concepts as OneTrainer would: their balancing as
whole repeats in the same proportions, their loss weights, captions from the prompt source each names, its image
and text settings as lowvram's options, its validation concept as --validation-data, and one line per setting
lowvram cannot follow."""

import copy
import dataclasses
import itertools
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_each, image_folders, run_config
from PIL import Image
from rich.console import Console
from safetensors import safe_open

from lowvram.cli import main
from lowvram.configure import read_toml
from lowvram.data.check import ScannedSets, scan
from lowvram.data.prepare import prepare_training_data
from lowvram.dataset_files import read_dataset
from lowvram.errors import LowvramError
from lowvram.hardware import NO_GPU
from lowvram.models import load_model
from lowvram.resolve import resolve_run
from lowvram.train.loop import train as main_train

# a concept as OneTrainer's Concepts tab saves it (its defaults), shortened to the keys lowvram reads or refuses
DEFAULT_CONCEPT = {
    "__version": 1, "name": "", "path": "", "seed": 123, "enabled": True, "type": "STANDARD",
    "include_subdirectories": False, "image_variations": 1, "text_variations": 1, "balancing": 1.0,
    "balancing_strategy": "REPEATS", "loss_weight": 1.0,
    "image": {"enable_crop_jitter": True, "enable_random_flip": True, "enable_fixed_flip": False,
              "enable_random_rotate": False, "random_rotate_max_angle": 0.0, "enable_random_brightness": False,
              "random_brightness_max_strength": 0.0, "enable_random_hue": False, "random_hue_max_strength": 0.0,
              "enable_resolution_override": False, "resolution_override": "512"},
    "text": {"prompt_source": "sample", "prompt_path": "", "enable_tag_shuffling": False, "tag_delimiter": ",",
             "keep_tags_count": 1, "tag_dropout_enable": False, "tag_dropout_mode": "FULL",
             "tag_dropout_probability": 0.0, "tag_dropout_special_tags_mode": "NONE", "caps_randomize_enable": False},
}


def concept(path: str, image: dict | None = None, text: dict | None = None, **values) -> dict:
    made = copy.deepcopy(DEFAULT_CONCEPT) | {"path": path, **values}
    made["image"] |= image or {}
    made["text"] |= text or {}
    return made


def write(path: Path, concepts) -> Path:
    path.write_text(json.dumps(concepts, indent=4))
    return path


def test_a_concepts_file_trains_its_concepts_with_their_balancing_captions_and_settings(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)  # alpha/: 3 captioned images; beta/: 3 uncaptioned; reg/: 2
    # (saved by Notepad: a BOM, which was read as the first caption's first characters, and CRLF)
    (tmp_path / "beta.txt").write_bytes(b"\xef\xbb\xbflvshape thing\r\nlvshape, a shape\r\n")
    write(tmp_path / "concepts.json", [
        concept("imgs/alpha", name="alpha", balancing=2.0, text={"enable_tag_shuffling": True}),
        concept(str(tmp_path / "imgs" / "beta"), name="thing", balancing=0.5, loss_weight=0.5,
                text={"prompt_source": "concept", "prompt_path": "beta.txt"}, image={"enable_random_flip": False}),
        concept("imgs/missing", name="off", enabled=False),
        concept("imgs/reg", name="held out", type="VALIDATION"),
    ])
    assert main(["train", "--model", "tiny", "--data", "concepts.json", "--resolution", "64", "--max-steps", "2",
                 "--output", "out"]) == 0
    captured = capsys.readouterr()
    err, out = " ".join(captured.err.split()), " ".join(captured.out.split())
    assert "concepts.json: read as a OneTrainer concepts file: 2 image folders" in err
    assert "balancing" not in err  # its fractional balancing is trained as it is
    assert "concepts[3] (off): disabled in OneTrainer, left out" in err
    assert "enable_random_flip" not in err and "flip: the concepts differ (False, True)" in err
    # OneTrainer's one cached variant: lowvram's 4 took 3.4 times its caching, unsaid (once for the file)
    assert err.count("image_variations 1 with random flip, crop or colour jitter: lowvram caches 2 variants per image "
                     "(4 with crop or colour jitter), its first as it is, so that epochs vary") == 1, err
    assert "concepts[1] (alpha), concepts[2] (thing): image_variations 1 with" in err  # (it named no concept)
    assert "6 images, 8 per epoch with repeats" in out  # 3 x 2 + half of 3, rounded up
    saved = read_toml(tmp_path / "out" / "out.toml")
    assert (saved["flip"], saved["crop"], saved["shuffle_tags"], saved["keep_tokens"]) == (True, "random", True, 1)
    assert saved["caption_lines"] == "each"
    assert saved["validation_data"] == str((tmp_path / "imgs" / "reg").resolve())
    meta = safe_open(str(tmp_path / "out" / "out.safetensors"), framework="pt").metadata()
    tags = json.loads(meta["ss_tag_frequency"])
    assert set(tags) == {"alpha", "beta"}  # by the concepts' folders, as kohya names its subsets'
    # the concept's prompt file captions every image of it, each line drawn in turn (each counted)
    assert tags["beta"] == {"lvshape thing": 3, "lvshape": 3, "a shape": 3}
    assert json.loads(meta["ss_dataset_dirs"])["beta"] == {"n_repeats": 0.5, "img_count": 3}
    capsys.readouterr()
    assert main(["check-data", "concepts.json", "--model", "tiny", "--report", "report.json"]) == 0
    # the concept balanced at 0.5: on average 1.5 of its 3 images an epoch (a row of 2 beside a total of its own)
    out = capsys.readouterr().out
    assert re.search(r"beta/?\s+│ thing\s+│\s+3 │\s+3 │\s+0 │\s+0\.5 │\s+~1\.5 ", out), out
    reg = (tmp_path / "imgs" / "reg").resolve()  # its validation concept, which check-data never named
    assert (f"validation: {reg}, 2 image(s) held out, validated on as training does; lowvram check-data {reg} checks "
            "them") in " ".join(out.split())
    records = json.loads((tmp_path / "report.json").read_text())["records"]
    beta = [r for r in records if r["relpath"].startswith("beta/")]
    assert all(r["more_captions"] == [["lvshape, a shape", None]] for r in beta)  # its second line, drawn in turn


def test_a_random_hue_is_said_and_switches_no_other_colour_change_on(tmp_path, monkeypatch):
    """Its strength turned on brightness, contrast and saturation jitter of that strength, never asked for."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    hue = {"enable_random_hue": True, "random_hue_max_strength": 0.1}
    dataset = read_dataset(write(tmp_path / "concepts.json", [concept("imgs/alpha", image=hue)]))
    assert dataset.values.get("color_jitter", 0.0) == 0.0
    assert any("image.enable_random_hue: lowvram varies brightness, contrast and saturation, not hue" in note
               for note in dataset.notes)
    jitter = {"enable_random_contrast": True, "random_contrast_max_strength": 0.2}
    assert read_dataset(write(tmp_path / "both.json", [concept("imgs/alpha", image=hue | jitter)])).values[
        "color_jitter"] == 0.2


def test_a_concepts_loss_weight_scales_its_images_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    data = write(tmp_path / "concepts.json", [concept("imgs/alpha", loss_weight=2.0), concept("imgs/beta")])
    config = run_config(data=str(data), cache_dir=str(tmp_path / "cache"), batch_size=1, resolution=64)
    run = dataclasses.replace(resolve_run(config, NO_GPU), cache_dir=tmp_path / "cache")
    reports = [scan(run, data, None, None)]
    assert {r.relpath.split("/")[0]: r.loss_weight for r in reports[0].usable} == {"alpha": 2.0, "beta": 1.0}
    assert reports[0].summary()["folders"]["alpha/"]["loss_weight"] == 2.0  # check-data's table shows it
    prepared = prepare_training_data(run, load_model("tiny"), ScannedSets.whole(reports), torch.device("cpu"),
                                     Console(quiet=True)).data
    weights = sorted(prepared.samples[i].weight for batch in prepared.epoch_batches(0) for i in batch)
    assert weights == [1.0] * 3 + [2.0] * 3


def test_prompt_sources_subfolders_and_samples_balancing(tmp_path, monkeypatch):
    """The file name as the prompt; include_subdirectories reads the folders inside; SAMPLES balancing asks for a
    number of images per epoch, whatever the concept holds."""
    monkeypatch.chdir(tmp_path)
    images = image_folders(tmp_path)
    (images / "beta" / "more" / "deep").mkdir(parents=True)  # (a folder of folders: no images of its own)
    for image in sorted((images / "alpha").glob("*.png"))[:2]:
        (images / "beta" / "more" / "deep" / f"extra_{image.name}").write_bytes(image.read_bytes())
    for image in sorted((images / "alpha").glob("*.png")):  # masks: no images, as OneTrainer counts them
        image.with_name(f"{image.stem}-masklabel.png").write_bytes(image.read_bytes())
    for system in ("__MACOSX", "@eaDir"):  # a zip's and a NAS's own folders: no images of the concept's
        (images / "beta" / system).mkdir()
        (images / "beta" / system / "thumb.png").write_bytes(next((images / "alpha").glob("*.png")).read_bytes())
    dataset = read_dataset(write(tmp_path / "concepts.json", [
        concept("imgs/alpha", text={"prompt_source": "filename"}, balancing=3, balancing_strategy="SAMPLES"),
        concept("imgs/beta", include_subdirectories=True, balancing=10, balancing_strategy="SAMPLES")]))
    assert [(s.folder.relative_to(images).as_posix(), s.repeats) for s in dataset.subsets] == [
        ("alpha", 1), ("beta", 2), ("beta/more/deep", 2)]  # 3 of 3 images, then 10 of 5: twice each (more/: said
    # to hold no images, nothing of it training)
    fewer = read_dataset(write(tmp_path / "fewer.json", [concept("imgs/beta", include_subdirectories=True,
                                                                 balancing=2, balancing_strategy="SAMPLES")]))
    assert [s.repeats for s in fewer.subsets] == [0.4, 0.4]  # 2 of its 5 images each epoch
    assert sorted(dataset.subsets[0].captions.values()) == ["00_red_circle", "01_yellow_square", "02_white_triangle"]
    assert dataset.subsets[1].captions is None  # its own caption files (none here: the template)
    named = read_dataset(write(tmp_path / "named.json", [concept("imgs/beta", include_subdirectories=True,
                                                                 text={"prompt_source": "filename"})]))
    # each folder's captions its own images' alone (the others' were "metadata_file entries that name no image")
    assert [sorted(Path(key).parent for key in s.captions) for s in named.subsets] == [
        [images / "beta"] * 3, [images / "beta" / "more" / "deep"] * 2]


def test_samples_balancing_spreads_over_the_images_that_train(tmp_path, monkeypatch):
    """SAMPLES 8 over a concept of 4 images that train and 5 files skipped (too small, not an image) shows each of
    the 4 twice: the count was of every file, so it trained 4 samples an epoch, half what was asked, unsaid."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "c"
    folder.mkdir()
    for n in range(4):
        Image.new("RGB", (64, 64), (40 * n, 100, 1)).save(folder / f"good{n}.png")
    for n in range(4):
        Image.new("RGB", (16, 16), (40 * n, 1, 100)).save(folder / f"tiny{n}.png")
    (folder / "broken.png").write_text("not an image")
    data = write(tmp_path / "concepts.json", [concept("c", balancing=8, balancing_strategy="SAMPLES")])
    config = run_config(data=str(data), cache_dir=str(tmp_path / "cache"), resolution=64)
    run = dataclasses.replace(resolve_run(config, NO_GPU), cache_dir=tmp_path / "cache")
    report = scan(run, data, None, None)
    assert len(report.usable) == 4
    assert [record.repeats for record in report.usable] == [2] * 4
    assert report.summary()["samples_per_epoch"] == 8
    assert [folder["repeats"] for folder in report.summary()["folders"].values()] == [2]  # (its table's row)


def test_a_fractional_balancing_trains_a_seeded_share_of_the_concept_each_epoch(tmp_path, monkeypatch):
    """OneTrainer's 0.25 shows a quarter of a concept's images per epoch: here the same count every epoch, a
    different quarter each time, the same quarters in every run of the seed; the whole repeats stay whole."""
    monkeypatch.chdir(tmp_path)
    images = image_folders(tmp_path)
    for n in range(5):  # alpha/: 8 images
        Image.new("RGB", (64, 64), (40 * n, 90, 200 - 30 * n)).save(images / "alpha" / f"plain{n}.png")
    data = write(tmp_path / "concepts.json", [concept("imgs/alpha", balancing=0.25), concept("imgs/beta",
                                                                                          balancing=1.5)])
    config = run_config(data=str(data), cache_dir=str(tmp_path / "cache"), batch_size=2, resolution=64)
    run = dataclasses.replace(resolve_run(config, NO_GPU), cache_dir=tmp_path / "cache")
    report = scan(run, data, None, None)
    assert report.summary()["samples_per_epoch"] == 2 + 3 + 2  # 8 x 0.25, 3 x 1.5 rounded half up
    prepared = prepare_training_data(run, load_model("tiny"), ScannedSets.whole([report]), torch.device("cpu"),
                                     Console(quiet=True)).data
    assert prepared.images_per_epoch == 7
    drawn = []
    for epoch in range(6):
        counts = Counter(report.usable[i].relpath.split("/")[0] + "/" + Path(report.usable[i].relpath).stem
                         for batch in prepared.epoch_batches(epoch) for i in batch)
        alpha = {name for name in counts if name.startswith("alpha/")}
        beta = [counts[name] for name in counts if name.startswith("beta/")]
        assert len(alpha) == 2 and sorted(beta) == [1, 2, 2]  # a quarter of alpha; beta once, and half again
        drawn.append(frozenset(alpha))
    assert len(set(drawn)) > 2  # another share most epochs
    again = prepare_training_data(run, load_model("tiny"), ScannedSets.whole([report]), torch.device("cpu"),
                                  Console(quiet=True)).data
    assert [again.epoch_batches(e) for e in range(6)] == [prepared.epoch_batches(e) for e in range(6)]


def test_a_balancing_that_trains_no_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    write(tmp_path / "concepts.json", [concept("imgs/alpha", balancing=0.01)])
    with pytest.raises(LowvramError, match=r"no image would train in an epoch: the balancing of every concept "
                                           r"rounds to none of its images; raise a balancing"):
        main_train(run_config(data="concepts.json", output=str(tmp_path / "out"), resolution=64, max_steps=1))
    from lowvram.cli import main

    assert main(["plan", "--model", "tiny", "--data", "concepts.json", "--vram", "8GB"]) == 2  # and as a dry run


def test_what_lowvram_cannot_train_as_onetrainer_would_is_refused_one_line_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    path = write(tmp_path / "concepts.json", [
        concept("imgs/alpha", type="COUNTEREXAMPLE"),
        concept("imgs/beta", image={"enable_random_rotate": True, "enable_resolution_override": True,
                                    "resolution_override": "512x768"},
                text={"tag_delimiter": ";"}, loss_weight=0),
        concept("imgs/missing"), {"name": "no path"}, "a string",
        concept("imgs/alpha", text={"prompt_source": "concept", "prompt_path": ""}),
        concept("imgs/reg", type="VALIDATION"), concept("imgs/alpha", validation_concept=True, type=None),
        # misspelt: OneTrainer passes over them, and a validation concept trained
        {k: v for k, v in concept("imgs/reg", concept_type="VALIDATION").items() if k != "type"},
        {**concept("imgs/alpha"), "text": {"enable_tag_shufling": True}, "image": {"enable_randm_flip": False}},
    ])  # (the last two written by hand: an export has every key, the misspelt one beside it)
    with pytest.raises(LowvramError) as error:
        read_dataset(path)
    expected = ["concepts[1] type: 'COUNTEREXAMPLE' is not a concept type lowvram reads",
                "concepts[2] image.enable_random_rotate:",
                "concepts[2] image.resolution_override: '512x768': lowvram reads one square resolution per concept",
                "concepts[2] text.tag_delimiter:",
                "concepts[2] loss_weight: 0 would train nothing", "concepts[3] path: folder not found: imgs/missing",
                "concepts[4] (no path): no path", "concepts[5]: 'a string' is not a concept",
                "concepts[6] text.prompt_path: none given for prompt_source concept",
                ("concepts[9] concept_type: no OneTrainer setting; did you mean type? (as written, type is left at "
                 "OneTrainer's default)"),
                "concepts[10] image.enable_randm_flip: no OneTrainer setting; did you mean image.enable_random_flip?",
                "concepts[10] text.enable_tag_shufling: no OneTrainer setting; did you mean text.enable_tag_shuffling?",
                "validation concepts: 2 of them"]
    assert_one_line_each(str(error.value), f"{path}: ", expected)


def test_files_that_are_no_concepts_file_get_errors_naming_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    write(tmp_path / "off.json", [concept("imgs/alpha", enabled=False)])
    assert main(["check-data", "off.json", "--model", "tiny"]) == 2
    assert "concepts: no enabled training concept; enable one" in capsys.readouterr().err
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "onetrainer.json").write_text(json.dumps({
        "concept_file_name": "training_concepts/concepts.json", "epochs": 10}))
    assert main(["check-data", "presets/onetrainer.json", "--model", "tiny"]) == 2
    assert ("is a OneTrainer training config; its concepts file training_concepts/concepts.json is not found beside "
            "it nor in OneTrainer's folder above it") in " ".join(capsys.readouterr().err.split())
    # found as --config finds it, from OneTrainer's folder (the path the refusal gave was no path from the user's)
    write((tmp_path / "training_concepts").mkdir() or tmp_path / "training_concepts" / "concepts.json",
          [concept("imgs/alpha")])
    monkeypatch.chdir(tmp_path / "presets")
    assert main(["check-data", "onetrainer.json", "--model", "tiny"]) == 0
    assert (f"its concepts file {tmp_path / 'training_concepts' / 'concepts.json'} is read; --config onetrainer.json "
            "reads its training settings too") in " ".join(capsys.readouterr().err.split())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "self.json").write_text(json.dumps({"concept_file_name": "self.json"}))  # (it recursed without end)
    assert main(["check-data", "self.json", "--model", "tiny"]) == 2
    assert "self.json names self.json as its concepts file, a training config too" in capsys.readouterr().err
    # a training config that holds its concepts inline is read as its concepts
    (tmp_path / "inline.json").write_text(json.dumps({"epochs": 10, "concepts": [concept("imgs/alpha")]}))
    assert main(["check-data", "inline.json", "--model", "tiny"]) == 0
    assert main(["train", "--model", "tiny", "--config", "inline.json"]) == 2
    assert "--config: inline.json is JSON, not a TOML config; a dataset file" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    assert main(["check-data", "other.json", "--model", "tiny"]) == 2
    assert "is neither a kohya dataset config" in capsys.readouterr().err
    # OneTrainer's samples.json: a list of objects too (read as concepts, "no path"; sent to --data from --config)
    (tmp_path / "samples.json").write_text(json.dumps([{"enabled": True, "prompt": "a cat", "cfg_scale": 7.0}]))
    for argv, flag, kind in ((["check-data", "samples.json", "--model", "tiny"], "--data", "dataset"),
                             (["train", "--model", "tiny", "--config", "samples.json"], "--config", "training config")):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().endswith(
            f"{flag}: samples.json is a list of sample prompts (OneTrainer's samples.json, kohya's prompt file), no "
            f"{kind}; give it as --sample-prompt-file samples.json")


def test_relative_folders_are_found_from_onetrainers_own_folder(tmp_path, monkeypatch):
    """OneTrainer reads a concept's relative path from its own folder, one above training_concepts/."""
    image_folders(tmp_path / "OneTrainer")
    (tmp_path / "OneTrainer" / "training_concepts").mkdir()
    path = write(tmp_path / "OneTrainer" / "training_concepts" / "concepts.json", [concept("imgs/alpha")])
    monkeypatch.chdir(tmp_path)
    assert read_dataset(path).subsets[0].folder == (tmp_path / "OneTrainer" / "imgs" / "alpha").resolve()


def half_of_two_buckets(tmp_path: Path) -> Path:
    """A concepts file of one concept balanced at 0.5: four square and four wide images, two buckets."""
    folder = tmp_path / "imgs" / "mixed"
    folder.mkdir(parents=True)
    for n in range(4):
        Image.new("RGB", (128, 128), (60 * n, 90, 40)).save(folder / f"square{n}.png")
        Image.new("RGB", (192, 96), (40, 60 * n, 90)).save(folder / f"wide{n}.png")
    return write(tmp_path / "concepts.json", [concept("imgs/mixed", balancing=0.5)])


def test_epochs_of_a_fractional_balancing_end_where_their_images_do(tmp_path, monkeypatch):
    """With a fractional balancing over two buckets, an epoch's batch count varies with the share it draws:
    --epochs N still trains exactly N passes, and each epoch's save falls at that epoch's end."""
    monkeypatch.chdir(tmp_path)
    data = half_of_two_buckets(tmp_path)
    result = main_train(run_config(data=str(data), output=str(tmp_path / "out"), resolution=128, batch_size=2,
                                   max_steps=None, epochs=6, save_every="1e", seed=3))
    batches = [len(result.data.epoch_batches(epoch)) for epoch in range(6)]
    assert len(set(batches)) > 1  # the premise: 4 of the 8 images, split 2+2 (2 batches) or 3+1 (3)
    ends = list(itertools.accumulate(batches))
    assert result.steps == ends[-1] and result.epochs == 6
    saves = sorted((tmp_path / "out").glob("out-0*.safetensors"))
    with_steps = {}
    for save in saves:
        with safe_open(str(save), "pt") as f:
            with_steps[save.name] = (int(f.metadata()["ss_steps"]), int(f.metadata()["ss_epoch"]))
    assert sorted(with_steps.values()) == [(end, epoch + 1) for epoch, end in enumerate(ends[:-1])]
    with safe_open(str(result.lora_path), "pt") as f:  # the epochs the run trains, as kohya's ss_num_epochs says
        assert f.metadata()["ss_num_epochs"] == "6"  # (from epoch 0's length: 5 or 8 with this seed or another)


def test_a_resume_inside_a_longer_epoch_keeps_that_epochs_earlier_steps_in_its_mean(tmp_path, monkeypatch):
    """The epoch a run resumes in is judged by its own batch count: with seed 3, epoch 0 has 2 batches and epoch 1
    has 3, so a resume after step 4 (two of epoch 1's batches) is inside epoch 1, and its mean loss is all three
    steps', as an uninterrupted run's is."""
    monkeypatch.chdir(tmp_path)
    data = half_of_two_buckets(tmp_path)
    whole = tmp_path / "whole"
    values = {"data": str(data), "resolution": 128, "batch_size": 2, "max_steps": None, "epochs": 2, "seed": 3,
              "checkpoint_every": 1, "keep_checkpoints": 10}
    result = main_train(run_config(output=str(whole), **values))
    assert [len(result.data.epoch_batches(epoch)) for epoch in range(2)] == [2, 3]  # the premise

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-000005")  # as if stopped after step 4, at epoch 1's batch 2 of 3
    for path in cut.glob("*.safetensors"):  # (its end's LoRA too: a final LoRA past the checkpoint is the run's end)
        path.unlink()
    main_train(run_config(output=str(cut), resume="auto", overwrite=True, **values))

    def epoch_losses(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(record["step"], record["epoch_loss"]) for record in records if "epoch_loss" in record]

    assert [step for step, _ in epoch_losses(cut)] == [step for step, _ in epoch_losses(whole)] == [2, 5]
    assert [loss for _, loss in epoch_losses(cut)] == pytest.approx([loss for _, loss in epoch_losses(whole)])


def test_a_concepts_own_text_variations_leave_the_others_theirs_and_tag_dropout_modes_are_onetrainers(tmp_path,
                                                                                                    monkeypatch):
    """One concept with text_variations 2 refused the others ("--caption-variants: None is invalid"); OneTrainer's
    FULL tag dropout (its default) leaves out all the tags past the kept ones at once, RANDOM each on its own."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    dropping = {"enable_tag_shuffling": True, "tag_dropout_enable": True, "tag_dropout_probability": 0.2}
    data = write(tmp_path / "concepts.json", [concept("imgs/alpha", text_variations=2, text=dropping),
                                             concept("imgs/beta", text=dropping | {"tag_dropout_mode": "RANDOM"})])
    assert main(["check-data", str(data), "--model", "tiny"]) == 0  # (read with every layer's checks)
    dataset = read_dataset(data)
    assert dataset.values["caption_variants"] == 2
    assert [dict(subset.settings or {}).get("caption_variants") for subset in dataset.subsets] == [None, 4]
    notes = " ".join(dataset.notes)
    assert "caption_variants: the concepts differ (2, lowvram's default 4)" in notes
    assert "concepts[1]: text.tag_dropout_mode FULL (OneTrainer's leaves out all the tags past the kept ones" in notes
    assert "concepts[2]: text.tag_dropout_mode" not in notes


def test_a_concepts_display_name_is_no_caption_for_its_uncaptioned_images(tmp_path, monkeypatch):
    """A concept named 'ohwx run 3 (tests)' captioned its uncaptioned images with that name, taken for a kohya
    folder's 'ohwx dog'."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)  # beta/: 3 uncaptioned images
    data = write(tmp_path / "concepts.json", [concept("imgs/beta", name="ohwx run 3 (tests)")])
    config = run_config(data=str(data), cache_dir=str(tmp_path / "cache"), trigger_word="ohwx", resolution=64)
    run = dataclasses.replace(resolve_run(config, NO_GPU), cache_dir=tmp_path / "cache")
    assert {record.caption for record in scan(run, data, "ohwx", None).usable} == {"ohwx"}
    # without a trigger word, as in OneTrainer: no caption (its display name trained as every image's caption)
    config = run_config(data=str(data), cache_dir=str(tmp_path / "cache"), resolution=64)
    run = dataclasses.replace(resolve_run(config, NO_GPU), cache_dir=tmp_path / "cache")
    records = scan(run, data, None, None).usable
    assert {record.caption for record in records} == {""}
    assert all("no caption file: template used: an empty caption" in record.notes for record in records)
    # a concept over a kohya folder named with the trigger: still no concept name (nor folder name) as the caption
    shutil.copytree(tmp_path / "imgs" / "beta", tmp_path / "imgs" / "5_ohwx dog")
    for name, caption in (("ohwx dog", "ohwx"), ("", "ohwx")):
        data = write(tmp_path / "concepts.json", [concept("imgs/5_ohwx dog", name=name)])
        config = run_config(data=str(data), cache_dir=str(tmp_path / "cache"), trigger_word="ohwx", resolution=64)
        run = dataclasses.replace(resolve_run(config, NO_GPU), cache_dir=tmp_path / "cache")
        assert {record.caption for record in scan(run, data, "ohwx", None).usable} == {caption}, name
