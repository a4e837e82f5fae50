"""`lowvram plan --data` says how long the run is, in steps and epochs, as training then counts it."""

import json
import re
import shutil

import lowvram.data.prepare as preparing
from lowvram.cli import main
from lowvram.data.sample import write_sample_dataset


def test_plan_counts_the_steps_training_runs(tmp_path, capsys, monkeypatch):
    images = sorted((write_sample_dataset(tmp_path / "source") / "5_lvshape").glob("*.png"))  # two shapes
    # two folders with their own repeats, a regularization set balanced against them, and a held-out share
    for folder, chosen in (("data/3_dog", images[:4]), ("data/1_cat", images[4:]), ("reg/2_person", images[:3])):
        (tmp_path / folder).mkdir(parents=True)
        for image in chosen:
            shutil.copy(image, tmp_path / folder)
            if folder.startswith("data"):
                shutil.copy(image.with_suffix(".txt"), tmp_path / folder)
    argv = ["--model", "tiny", "--data", str(tmp_path / "data"), "--reg-data", str(tmp_path / "reg"), "--batch-size",
            "2", "--epochs", "2", "--validation-split", "0.2", "--rank", "2", "--cache-dir", str(tmp_path / "cache"),
            "--flip", "--crop", "random", "--shuffle-tags", "--mixed-precision", "no"]  # (fp32: as the CPU caches)
    assert main(["plan", *argv, "--vram", "8GB", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["run_length"]
    estimates = []  # the caching phase's own count of its entries' bytes: every one, then those it lacks
    real = preparing.estimate_bytes
    monkeypatch.setattr(preparing, "estimate_bytes", lambda *args: estimates.append(real(*args)) or estimates[-1])
    assert main(["train", *argv, "--output", str(tmp_path / "out")]) == 0
    assert planned["cache_bytes"] == estimates[0] > 0  # flipped variants, shuffled captions, validation and class
    said = re.search(r"(\d+) steps = ([\d.]+) epochs? of (\d+)", capsys.readouterr().out)
    assert (int(said[1]), float(said[2]), int(said[3])) == (
        planned["total_steps"], planned["epochs"], planned["steps_per_epoch"]) == (26, 2, 13)
    # 4 dogs x 3 + 1 cat (the other held out), and as many regularization samples: 13 batches of 2 in 2 buckets
    assert planned["images_per_epoch"] == 26


def test_counting_batches_unshuffled_finds_the_batches_training_draws():
    """The count without torch (plan's) has the same batches, by bucket and size, as training's shuffled epochs."""
    from lowvram.data.epochs import Epochs, Sample

    def sample(bucket, repeats, batch_size=None):
        return Sample((), (), "", bucket, repeats, group=str(bucket), batch_size=batch_size)

    samples = [sample((64, 64), 3), sample((64, 64), 2.5), sample((64, 96), 1, batch_size=1), sample((96, 64), 7),
               sample((64, 96), 0.5), sample((64, 64), 1)]
    epochs = Epochs(samples, [sample((64, 96), 4)], batch_size=3, seed=5)

    def shapes(batches):
        return sorted((epochs.samples[batch[0]].bucket, len(batch)) for batch in batches)

    for epoch in range(3):
        assert shapes(epochs.epoch_batches(epoch)) == shapes(epochs.epoch_batches(epoch, shuffled=False))
    assert epochs.batches_per_epoch == len(epochs.epoch_batches(0)) > 4


def test_plan_counts_a_validation_folder_inside_the_dataset_out_of_training(tmp_path, capsys):
    """--validation-data inside --data: training holds those images out (prepare drops them by path), so the
    plan's count does too."""
    data = write_sample_dataset(tmp_path / "data")
    (data / "2_held").mkdir()
    for image in sorted((data / "5_lvshape").glob("*.png"))[:2]:
        shutil.copy(image, data / "2_held" / f"held_{image.name}")
    args = ["plan", "--model", "tiny", "--data", str(data), "--vram", "8GB", "--json", "--epochs", "1"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["run_length"]["images_per_epoch"] == 6 * 5 + 2 * 2
    assert main([*args, "--validation-data", str(data / "2_held")]) == 0
    assert json.loads(capsys.readouterr().out)["run_length"]["images_per_epoch"] == 6 * 5
    assert main([*args, "--validation-data", str(data)]) == 2  # none left to train: refused (training waited forever)
    assert f"--validation-data {data} holds every image of --data {data}, so none is left" in capsys.readouterr().err
