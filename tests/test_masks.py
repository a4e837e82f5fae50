"""--masked-loss: OneTrainer's `<image>-masklabel.png` masks restrict an image's loss to its white area; mask files
are never trained on as images; a mask that cannot be its image's is a skip with the reason."""

import json
import random
from pathlib import Path

import pytest
from conftest import run_config
from PIL import Image

from lowvram.cli import main
from lowvram.data.check import scan
from lowvram.hardware import NO_GPU
from lowvram.resolve import resolve_run
from lowvram.train.loop import train


def masked_dataset(root, masks: dict[str, Image.Image]):
    """The sample dataset (six 96x96 or 96x112 images) with the given masks written beside its images."""
    from lowvram.data.sample import write_sample_dataset

    folder = write_sample_dataset(root) / "5_lvshape"
    for stem, mask in masks.items():
        mask.save(folder / f"{stem}-masklabel.png")
    return folder


def left_half_white(width: int, height: int) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    return mask


def test_the_scan_pairs_masks_with_their_images_and_never_takes_them_for_images(tmp_path, capsys):
    folder = masked_dataset(tmp_path / "data", {"00_red_circle": left_half_white(96, 96),
                                                "02_white_triangle": left_half_white(64, 96),  # another shape
                                                "lost": left_half_white(96, 96)})  # no image of that name
    (folder / "04_blue_square-masklabel.png").write_bytes(b"not a png")
    in_alpha = Image.new("RGBA", (96, 112), (0, 0, 0, 0))  # drawn in transparency: black in every grey level
    in_alpha.paste((0, 0, 0, 255), (0, 0, 48, 112))
    in_alpha.save(folder / "03_orange_circle-masklabel.png")
    see_through = Image.new("RGBA", (96, 112), (255, 255, 255, 0))  # white where hidden: the whole image trains
    see_through.paste((255, 255, 255, 255), (0, 0, 48, 112))
    see_through.save(folder / "05_green_triangle-masklabel.png")
    # OneTrainer's other label files and masks saved otherwise: never images (a JPEG mask trained as one), and said
    left_half_white(96, 112).save(folder / "05_green_triangle-masklabel.jpg")
    left_half_white(96, 112).save(folder / "01_yellow_square-MaskLabel.PNG")
    left_half_white(96, 112).save(folder / "01_yellow_square-condlabel.png")
    (folder / "01_yellow_square-condlabel.txt").write_text("a caption, not a label")
    report = tmp_path / "plain.json"
    assert main(["check-data", str(tmp_path / "data"), "--model", "tiny", "--report", str(report)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert json.loads(report.read_text())["summary"]["usable"] == 6  # masks are no images, with or without the flag
    assert "5 image(s) have a -masklabel.png mask (OneTrainer's), unused: --masked-loss" in out
    assert "ignored 1 mask file(s) in 5_lvshape/ without an image of the same name: lost-masklabel.png" in out
    assert ("ignored 3 label file(s) in 5_lvshape/, not images and not read as masks: 01_yellow_square-MaskLabel.PNG, "
            "01_yellow_square-condlabel.png, 05_green_triangle-masklabel.jpg (a mask is read as <image "
            "name>-masklabel.png, as OneTrainer reads it)") in out
    masked = tmp_path / "masked.json"
    main(["check-data", str(tmp_path / "data"), "--model", "tiny", "--masked-loss", "--report", str(masked)])
    records = {r["relpath"].split("/")[-1]: r for r in json.loads(masked.read_text())["records"]}
    assert records["00_red_circle.png"]["mask"].endswith("00_red_circle-masklabel.png")
    assert not any("transparency" in note for note in records["00_red_circle.png"]["notes"])
    assert "no mask: trained everywhere" in records["01_yellow_square.png"]["notes"]
    assert ("05_green_triangle-masklabel.png's transparency is not read: its grey levels weigh the loss"
            in records["05_green_triangle.png"]["notes"])
    assert records["02_white_triangle.png"]["reason"].startswith(
        "mask of another shape: 02_white_triangle-masklabel.png is 64x96, the image 96x96")
    assert records["04_blue_square.png"]["reason"].startswith("mask unreadable: 04_blue_square-masklabel.png is")
    assert records["03_orange_circle.png"]["reason"].startswith(
        "mask all black: nothing of the image would train; white marks what trains, so fix "
        "03_orange_circle-masklabel.png")
    assert "--masked-loss: no image has a mask" not in capsys.readouterr().out
    # the flag over a dataset of no masks at all: said once, not only in a row per file
    for mask in (tmp_path / "data").rglob("*-masklabel.png"):
        mask.unlink()
    assert main(["check-data", str(tmp_path / "data"), "--model", "tiny", "--masked-loss"]) == 0
    assert ("--masked-loss: no image has a mask beside it (<image name>-masklabel.png), so each trains everywhere, as "
            "without it") in " ".join(capsys.readouterr().out.split())


def test_a_mask_reaches_the_loss_and_the_unmasked_weight_lifts_the_rest(tmp_path):
    stems = ["00_red_circle", "01_yellow_square", "02_white_triangle", "03_orange_circle", "04_blue_square",
             "05_green_triangle"]
    sizes = {stem: (96, 96 + 16 * (i % 2)) for i, stem in enumerate(stems)}
    masked_dataset(tmp_path / "half", {stem: left_half_white(*size) for stem, size in sizes.items()})
    result = train(run_config(data=str(tmp_path / "half"), output=str(tmp_path / "out"), masked_loss=True,
                              max_steps=1, resolution=64))
    batch = result.data.load([0], random.Random(0))
    mask = batch.mask[0, 0]  # at the latents' resolution: left half ones, right half zeros
    assert mask.shape == batch.latents.shape[-2:]
    half = mask.shape[1] // 2
    # resized with the image: only the column at the edge is in between
    assert bool((mask[:, :half - 1] > 0.97).all()) and bool((mask[:, half + 1:] < 0.03).all())

    # the unmasked weight lifts the black area: near 1 the whole image counts, as without masks
    runs = {weight: train(run_config(data=str(tmp_path / "half"), output=str(tmp_path / f"w{weight}"), max_steps=1,
                                     masked_loss=weight is not None, unmasked_weight=weight or 0.0, resolution=64))
            for weight in (None, 0.0, 0.999)}
    assert runs[0.999].final_loss == pytest.approx(runs[None].final_loss, rel=1e-3)
    assert runs[0.0].final_loss != pytest.approx(runs[None].final_loss, rel=1e-3)


def test_an_image_without_a_mask_trains_everywhere_beside_a_masked_one_in_its_batch(tmp_path):
    masked_dataset(tmp_path / "one", {"00_red_circle": left_half_white(96, 96)})
    result = train(run_config(data=str(tmp_path / "one"), output=str(tmp_path / "out"), masked_loss=True,
                              max_steps=1, resolution=64))
    samples = result.data.samples
    masked = next(i for i, sample in enumerate(samples) if "red circle" in sample.caption)
    plain = next(i for i, sample in enumerate(samples) if i != masked and sample.bucket == samples[masked].bucket)
    batch = result.data.load([masked, plain], random.Random(0))
    assert not bool((batch.mask[0] == 1).all()) and bool((batch.mask[1] == 1).all())


def test_a_black_mask_is_a_skip_not_an_image_that_trains_nothing(tmp_path):
    masked_dataset(tmp_path / "black", {"00_red_circle": Image.new("L", (96, 96), 0)})
    config = run_config(data=str(tmp_path / "black"), masked_loss=True)
    report = scan(resolve_run(config, NO_GPU), tmp_path / "black", None, None)
    skipped = {Path(r.relpath).name: r.reason for r in report.skipped}
    assert list(skipped) == ["00_red_circle.png"]
    assert skipped["00_red_circle.png"].startswith("mask all black: nothing of the image would train")


def test_a_16_bit_mask_keeps_its_grey_levels(tmp_path):
    """A mask saved in 16 bits: its grey trained fully (Pillow's convert clips such levels at 255, so 25 % grey
    read as white), where the README promises grey trains partly."""
    import numpy as np

    levels = np.full((112, 96), 16384, dtype=np.uint16)  # a quarter of 65535
    levels[:, :48] = 65535
    masked_dataset(tmp_path / "deep", {"01_yellow_square": Image.fromarray(levels)})
    result = train(run_config(data=str(tmp_path / "deep"), output=str(tmp_path / "out"), masked_loss=True,
                              max_steps=1, resolution=64))
    index = next(i for i, sample in enumerate(result.data.samples) if "yellow square" in sample.caption)
    mask = result.data.load([index], random.Random(0)).mask[0, 0]
    half = mask.shape[1] // 2
    assert bool((mask[:, :half - 1] > 0.97).all()) and bool(((mask[:, half + 1:] - 0.25).abs() < 0.03).all())
