"""--extra-resolutions: every image trains at each resolution (kohya's datasets of the same images at several
resolutions, ai-toolkit's resolution list): its latents are cached per resolution, an epoch holds each image once
at each, batches keep one bucket each, and the planner plans for the largest."""

import json

import pytest
from conftest import run_config
from safetensors import safe_open

from lowvram.cli import main
from lowvram.errors import LowvramError
from lowvram.hardware import load_profile
from lowvram.plan import workload_for
from lowvram.resolve import resolve_run
from lowvram.train.loop import train


def test_each_image_trains_at_each_resolution(tmp_path, sample_data):
    single = train(run_config(data=str(sample_data), output=str(tmp_path / "one"), max_steps=1))
    multi = train(run_config(data=str(sample_data), output=str(tmp_path / "two"), max_steps=4, resolution=64,
                             extra_resolutions="96,80", batch_size=2))
    assert multi.data.images_per_epoch == 3 * single.data.images_per_epoch
    factor = 2 ** (len(multi.model.vae.config.block_out_channels) - 1)  # pixels per latent
    sides = set()
    draws = multi.data.batches()
    for _ in range(multi.data.batches_per_epoch):
        sides.add(next(draws)[2].latents.shape[-1] * factor)  # square images: one bucket per resolution
    assert sides == {64, 80, 96}
    assert multi.lora_path.is_file()
    # AUTOMATIC1111's LoRA card lists the buckets of every resolution, each with its share of the samples
    metadata = safe_open(str(multi.lora_path), framework="pt").metadata()
    buckets = json.loads(metadata["ss_bucket_info"])["buckets"].values()
    assert {tuple(b["resolution"]) for b in buckets} == {(64, 64), (80, 80), (96, 96), (80, 112)}  # 96x112 at 96
    assert sum(b["count"] for b in buckets) == int(metadata["ss_num_train_images"]) == multi.data.images_per_epoch


def test_the_planner_plans_for_the_largest_resolution():
    run = resolve_run(run_config(model="sdxl", resolution=768, extra_resolutions="1024,512"),
                      load_profile("rtx-3060-12gb"))
    assert run.resolutions == (768, 1024, 512) and workload_for(run).resolution == 1024


@pytest.mark.parametrize(("value", "message"), [
    ("512,abc", "--extra-resolutions: '512,abc' is not a list of resolutions"),
    ("100", "--extra-resolutions: 100 must be a multiple of 8"),
    ("512,512", "--extra-resolutions: '512,512' names a resolution twice"),
    ("64", "--extra-resolutions: 64 is --resolution already"),
])
def test_wrong_resolutions_are_refused_in_one_line(value, message):
    with pytest.raises(LowvramError, match=message):
        run_config(resolution=64, extra_resolutions=value)


def test_kohyas_datasets_of_the_same_images_at_several_resolutions_are_read_as_that(tmp_path, sample_data,
                                                                                      capsys):
    from lowvram.dataset_files import read_dataset

    folder = sample_data / "5_lvshape"
    subset = f'[[datasets.subsets]]\nimage_dir = "{folder}"\nnum_repeats = 2\n'
    (tmp_path / "multires.toml").write_text(f"[[datasets]]\nresolution = 64\n{subset}"
                                            f"[[datasets]]\nresolution = [96, 96]\n{subset}")
    dataset = read_dataset(tmp_path / "multires.toml")
    assert (dataset.values["resolution"], dataset.values["extra_resolutions"]) == (64, "96")
    assert len(dataset.subsets) == 1  # once, at each resolution
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "multires.toml"), "--output",
                 str(tmp_path / "out"), "--max-steps", "1"]) == 0
    assert "6 images at 64 px, 96 px, 24 per epoch with repeats" in " ".join(capsys.readouterr().out.split())
    other = f'[[datasets.subsets]]\nimage_dir = "{folder}"\n'  # one repeat: another subset
    (tmp_path / "other.toml").write_text(f"[[datasets]]\nresolution = 64\n{subset}"
                                         f"[[datasets]]\nresolution = 96\n{other}")
    # other subsets (not the same repeats): each trains at its own dataset's resolution
    assert [(s.repeats, s.resolution) for s in read_dataset(tmp_path / "other.toml").subsets] == [(2, None), (1, 96)]


def test_kohyas_datasets_of_other_images_at_other_resolutions_train_each_at_its_own(tmp_path, sample_data, capsys):
    """kohya's dataset config example: two datasets of different images, each at its resolution and batch size.
    The first's are --resolution and --batch-size; the other's subsets are judged (small images) and trained at
    theirs, their latents in its buckets, in batches of their own; the planner plans for the batches with the most
    pixels, and the LoRA's metadata counts each image once."""
    from lowvram.data.check import scan
    from lowvram.data.sample import write_sample_dataset
    from lowvram.dataset_files import read_dataset

    other = write_sample_dataset(tmp_path / "other")  # 96 px images: enlarged at 128 px, not at 64
    (tmp_path / "two.toml").write_text(
        f'[[datasets]]\nresolution = 64\nbatch_size = 2\n[[datasets.subsets]]\n'
        f'image_dir = "{sample_data / "5_lvshape"}"\n'
        f'[[datasets]]\nresolution = [128, 128]\nbatch_size = 1\n[[datasets.subsets]]\n'
        f'image_dir = "{other / "5_lvshape"}"\n')
    dataset = read_dataset(tmp_path / "two.toml")
    assert (dataset.values["resolution"], dataset.values["batch_size"]) == (64, 2)
    assert "extra_resolutions" not in dataset.values
    assert [(s.resolution, s.batch_size) for s in dataset.subsets] == [(None, None), (128, 1)]
    assert {"datasets[2]: its images train at 128 px (the others at 64 px)",
            "datasets[2]: its images train in batches of 1 (the others in batches of 2)"} <= set(dataset.notes)

    from lowvram.configure import with_dataset_settings

    config = run_config(**with_dataset_settings({"data": str(tmp_path / "two.toml"), "output": str(tmp_path / "out"),
                                                 "max_steps": 2}, "the test"))  # as the command line reads it
    run = resolve_run(config, load_profile("rtx-3060-12gb"))
    assert run.resolution == 64 and run.planned_shape == (128, 1)  # 16384 pixels a batch, not 64 x 64 x 2
    assert (workload_for(run).resolution, workload_for(run).batch) == (128, 1)
    upscaled = {r.relpath.startswith("other") for r in scan(run, tmp_path / "two.toml", None, None).records
                if any(note.startswith("upscaled") for note in r.notes)}
    assert upscaled == {True}

    result = train(config)
    out = " ".join(capsys.readouterr().out.split())
    assert "12 images at 64 px, 128 px, 12 per epoch" in out and "batch 2 (some folders 1) x 1" in out
    areas = sorted(sample.bucket[0] * sample.bucket[1] for sample in result.data.samples)
    assert len(areas) == 12 and max(areas[:6]) <= 64 * 64 < 96 * 96 < min(areas[6:])  # six at 64 px, six at 128
    large = {i for i, sample in enumerate(result.data.samples) if sample.bucket[0] * sample.bucket[1] > 64 * 64}
    sizes = sorted((len(batch), batch[0] in large) for batch in result.data.epoch_batches(0))
    assert sizes[-1] == (2, False) and all(size == 1 for size, big in sizes if big) and len(sizes) == 6 + 3
    with safe_open(str(result.lora_path), "pt") as lora:
        assert lora.metadata()["ss_num_train_images"] == "12"


def test_a_onetrainer_concepts_resolution_override_trains_its_images_at_it(tmp_path, sample_data):
    import json

    from lowvram.dataset_files import read_dataset

    concepts = [{"name": "plain", "path": str(sample_data / "5_lvshape")},
                {"name": "large", "path": str(sample_data / "5_lvshape"),
                 "image": {"enable_resolution_override": True, "resolution_override": "96"}}]
    (tmp_path / "concepts.json").write_text(json.dumps(concepts))
    assert [s.resolution for s in read_dataset(tmp_path / "concepts.json").subsets] == [None, 96]


def test_a_large_jpeg_is_decoded_large_enough_for_each_resolution(tmp_path):
    """A JPEG may be decoded reduced (draft mode) to what its bucket needs: for a larger resolution's bucket it
    must be decoded at that one's size, not at the first resolution's and then enlarged."""
    import numpy as np
    from PIL import Image

    from lowvram.data.buckets import default_buckets
    from lowvram.data.folders import ScanOptions
    from lowvram.data.scan import open_training_image, scan_dataset

    folder = tmp_path / "1_x"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.jpg", quality=90)
    record = scan_dataset(tmp_path, default_buckets(512), ScanOptions()).records[0]
    assert record.bucket == (512, 512)
    assert open_training_image(record)[0].size == (512, 512)  # reduced for its own bucket
    larger = default_buckets(1024).place(record.width, record.height)
    image = open_training_image(record, ScanOptions(), larger.bucket)[0]
    assert image.size[0] >= larger.scaled[0] and image.size[1] >= larger.scaled[1]
