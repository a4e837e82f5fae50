"""The latent and text-embedding caches: content-addressed, resumable, self-healing; and training on a
messy dataset completes on the good files without touching the user's folder."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from conftest import run_config
from messy_dataset import write_messy_dataset
from rich.console import Console

from lowvram.data.cache import TensorStore
from lowvram.data.check import ScannedSets, scan
from lowvram.data.prepare import prepare_training_data
from lowvram.errors import LowvramError
from lowvram.hardware import NO_GPU
from lowvram.models import load_model
from lowvram.resolve import resolve_run
from lowvram.train.loop import train

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def resolved(config, cache_dir):
    """The run as check-data resolves it (no GPU), caching in `cache_dir`."""
    return dataclasses.replace(resolve_run(config, NO_GPU), cache_dir=Path(cache_dir))


def prepare(config, model, data_root, cache_dir):
    run = resolved(config, cache_dir)
    reports = [scan(run, data_root, config.data.trigger_word, None)]
    return prepare_training_data(run, model, ScannedSets.whole(reports), torch.device("cpu"), QUIET)


def setup(tmp_path, sample_data, **options):
    cache = tmp_path / "cache"
    config = run_config(data=str(sample_data), cache_dir=str(cache), **options)
    return config, cache


def test_second_run_encodes_nothing(tmp_path, sample_data, tiny):
    config, cache = setup(tmp_path, sample_data, flip=True)
    first = prepare(config, tiny, sample_data, cache)
    assert (first.encoded_latents, first.encoded_texts) == (12, 6)  # 6 images x 2 variants; 6 captions
    again = prepare(config, tiny, sample_data, cache)
    assert (again.encoded_latents, again.encoded_texts) == (0, 0)


def test_a_cached_latent_depends_on_its_key_alone_not_on_the_batch_or_the_random_state(tmp_path, sample_data,
                                                                                      tiny):
    """The same key must hold the same latent however the cache was filled: in batches of 4 or one at a time,
    after other random draws. (Drawn from the global random state, each depended on the draws before it.)"""
    entries = []
    for name, batch in (("batched", 4), ("one-by-one", 1)):
        config, cache = setup(tmp_path / name, sample_data, flip=True, cache_batch_size=batch)
        torch.manual_seed(len(name))  # a different global random state for each fill
        prepare(config, tiny, sample_data, cache)
        store = TensorStore(cache, "latents")
        entries.append({p.stem: store.load(p.stem)["latent"] for p in (cache / "latents").rglob("*.safetensors")})
    batched, single = entries
    assert batched.keys() == single.keys() and len(batched) == 12
    gap = max((batched[key] - single[key]).abs().max().item() for key in batched)
    assert gap < 1e-4, gap  # the VAE in a batch of 4 or of 1 rounds differently; a different draw is ~1


def test_editing_one_caption_reencodes_only_that_embedding(tmp_path, sample_data, tiny):
    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    caption = next(sample_data.glob("*/*.txt"))
    caption.write_text("lvshape, an entirely new caption")
    again = prepare(config, tiny, sample_data, cache)
    assert (again.encoded_latents, again.encoded_texts) == (0, 1)


def test_replacing_one_image_reencodes_only_its_latents(tmp_path, sample_data, tiny):
    config, cache = setup(tmp_path, sample_data, flip=True)
    prepare(config, tiny, sample_data, cache)
    from PIL import Image

    image = next(sample_data.glob("*/*.png"))
    Image.new("RGB", (96, 112), (1, 2, 3)).save(image)
    again = prepare(config, tiny, sample_data, cache)
    assert (again.encoded_latents, again.encoded_texts) == (2, 0)  # both variants of that image


def test_changing_the_vae_or_the_crop_invalidates_the_latents(tmp_path, sample_data, tiny):
    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    assert prepare(run_config(data=str(sample_data), cache_dir=str(cache), crop="random", latent_variants=1),
                   tiny, sample_data, cache).encoded_latents == 0  # variant 0 is the centre crop either way
    other = load_model("tiny")
    with torch.no_grad():
        other.vae.decoder.conv_out.weight.add_(0.01)  # a fine-tuned decoder changes the VAE's identity
    assert prepare(config, other, sample_data, cache).encoded_latents == 6


def test_what_an_entry_was_encoded_with_is_part_of_its_key(tmp_path, tiny):
    """Each of these changes what would be trained on, so it re-encodes what it changes, and nothing else: a mask
    edited, --background (transparent images), --vae-tiling, the VAE's dtype (an SDXL VAE moved to fp32 against
    NaNs), the text encoders' weights (another checkpoint of the family)."""
    from PIL import Image

    root = tmp_path / "data" / "1_cut"
    root.mkdir(parents=True)
    for i in range(3):
        image = Image.new("RGBA", (64, 64), (200, 40 * i, 0, 0))
        image.paste((200, 40 * i, 0, 255), (0, 0, 32, 64))  # left half opaque
        image.save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"caption {i}")
    Image.new("L", (64, 64), 255).save(root / "0-masklabel.png")
    base = {"data": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache"), "masked_loss": True}

    def encoded(model=tiny, **options):
        prepared = prepare(run_config(**base, **options), model, tmp_path / "data", tmp_path / "cache")
        return prepared.encoded_latents, prepared.encoded_texts

    assert encoded() == (3, 3)
    Image.new("L", (64, 64), 128).save(root / "0-masklabel.png")
    assert encoded() == (1, 0)
    assert encoded(background="black") == (3, 0)
    assert encoded(vae_tiling=True) == (3, 0)
    other = load_model("tiny")
    other.vae.to(torch.bfloat16)
    assert encoded(other) == (3, 0)
    other = load_model("tiny")
    with torch.no_grad():
        other.text_encoders[0].final_layer_norm.bias.add_(0.01)
    assert encoded(other) == (0, 3)
    assert encoded() == (0, 0)


def test_truncated_cache_file_is_rebuilt(tmp_path, sample_data, tiny, monkeypatch):
    """Entries are written without an fsync (85 % of each entry's write): one a power cut left short or empty is
    made again."""
    from lowvram import files

    synced = []  # (the files' names, as Linux keeps them for each open file)
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    assert not [name for name in synced if ".safetensors" in name], synced
    files.save_safetensors({"x": torch.zeros(1)}, tmp_path / "lora.safetensors")  # (what a run keeps: synced)
    assert ".lora.safetensors." in synced[-1]
    victim, emptied = sorted((cache / "latents").rglob("*.safetensors"))[:2]
    victim.write_bytes(victim.read_bytes()[:40])
    emptied.write_bytes(b"")
    again = prepare(config, tiny, sample_data, cache)
    assert (again.encoded_latents, again.encoded_texts) == (2, 0)
    assert len(TensorStore(cache, "latents").load(victim.stem)["latent"].shape) == 3


def test_images_gone_or_broken_during_caching_are_left_out_of_the_run_not_stopping_it(tmp_path, sample_data, tiny):
    """Deleted, or cut short, after the scan and before their latents are encoded (a user tidying the dataset
    during an hour of caching): the run goes on without them, as the scan leaves a bad file out, and says so; a
    copy of a deleted image (the scan's "duplicate: delete one") is read in its place and trains."""
    images = sorted((sample_data / "5_lvshape").glob("*.png"))
    copy = images[2].with_name("zz_copy.png")
    shutil.copy(images[2], copy)
    config, cache = setup(tmp_path, sample_data)
    run = resolved(config, cache)
    sets = ScannedSets.whole([scan(run, sample_data, config.data.trigger_word, None)])
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:60])
    images[2].unlink()  # the copy's latent is this one's: its file was the one read
    console = Console(record=True, width=400)
    prepared = prepare_training_data(run, tiny, sets, torch.device("cpu"), console)
    assert len(prepared.data.samples) == len(images) + 1 - 3
    assert prepared.encoded_latents == len(images) - 3 + 1
    printed = console.export_text()
    assert "warning: 3 image(s) left out of this run, unreadable since the scan: " in printed, printed
    assert str(images[0]) in printed
    # what the run's summary, the LoRA's metadata and a checkpoint count: the images that trained
    assert sorted(record.path for record in sets.training) == sorted([*images[3:], copy])
    assert len(sets.reports[0].usable) == len(images) + 1 - 3
    assert {record.path for record in sets.reports[0].skipped} == set(images[:3])
    sets = ScannedSets.whole([scan(run, sample_data, config.data.trigger_word, None)])
    for image in [*images[3:], copy]:
        image.unlink()
    with pytest.raises(LowvramError, match="^no image of the dataset could be read when caching: "):  # (none cached)
        prepare_training_data(resolved(config, tmp_path / "new"), tiny, sets, torch.device("cpu"), QUIET)


def test_an_entry_broken_after_its_check_is_removed_and_named(tmp_path, sample_data, tiny):
    """Broken between the caching phase's check and training's read (a disk error, another process): the run
    stops in one line naming it, and the next run rebuilds it."""
    from lowvram.errors import LowvramError

    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    victim = next((cache / "latents").rglob("*.safetensors"))
    victim.write_bytes(b"garbage")
    with pytest.raises(LowvramError, match=f"^cache entry {re.escape(str(victim))} is unreadable .*; it was removed"):
        TensorStore(cache, "latents").load(victim.stem)
    assert not victim.exists()
    zeroed = next((cache / "latents").rglob("*.safetensors"))  # its end never reached the disk (no fsync): zeros
    data = zeroed.read_bytes()
    zeroed.write_bytes(data[: len(data) - 64] + bytes(64))
    assert not TensorStore(cache, "latents").valid(zeroed.stem) and not zeroed.exists()  # (its header whole)
    zeroed = next((cache / "latents").rglob("*.safetensors"))
    assert TensorStore(cache, "latents").valid(zeroed.stem)
    data = zeroed.read_bytes()
    zeroed.write_bytes(data[: len(data) - 64] + bytes(64))  # after the caching phase's check
    from safetensors.torch import save_file

    older = next(p for p in (cache / "latents").rglob("*.safetensors") if p != zeroed)  # written before checksums
    save_file(TensorStore(cache, "latents").load(older.stem), str(older), {"key": older.stem})
    assert TensorStore(cache, "latents").valid(older.stem)
    older.write_bytes(older.read_bytes()[:-16])  # cut short: no checksum to tell, its loading does
    assert not TensorStore(cache, "latents").valid(older.stem) and not older.exists()
    with pytest.raises(LowvramError, match=r"\(its tensors do not match the checksum written with them\); it was "
                                           "removed"):
        TensorStore(cache, "latents").load(zeroed.stem)
    other = next((cache / "latents").rglob("*.safetensors"))
    other.unlink()  # another user's `cache --clear` while this run held no lock on the cache (one not its to write)
    with pytest.raises(LowvramError, match=f"^cache entry {re.escape(str(other))} was removed while this run read the "
                                           r"cache \(by `lowvram cache --clear`.*; run the same command with "
                                           "--resume auto to rebuild it and go on"):  # (run again: refused)
        TensorStore(cache, "latents").load(other.stem)


def test_a_cache_that_fits_neither_the_disk_nor_twice_the_ram_is_refused_in_one_line(tmp_path):
    import psutil

    from lowvram.errors import LowvramError

    store = TensorStore(tmp_path, "latents")
    available = psutil.virtual_memory().available
    with pytest.raises(LowvramError, match=r"^the disk is full; keeping the cache in memory instead needs .* of RAM "
                                           r"and .* is available: free disk space or pass another --cache-dir$"):
        store.keep_in_memory("the disk is full", int(available * 0.6))  # twice that is more than there is
    assert store.memory is None
    store.keep_in_memory("the disk is full", 1024)
    assert store.memory == {} and store.fell_back == "the disk is full"


def test_a_killed_writers_temporary_files_are_removed_once_old_not_while_another_run_may_write(
        tmp_path, sample_data, tiny):
    import os
    import time

    config, cache = setup(tmp_path, sample_data)
    prepare(config, tiny, sample_data, cache)
    folder = next((cache / "latents").iterdir())
    old, fresh = folder / ".entry.safetensors.abcd1234.tmp", folder / ".other.safetensors.efgh5678.tmp"
    for path in (old, fresh):
        path.write_bytes(b"half an entry")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    console = Console(record=True, width=400)
    run = resolved(config, cache)
    prepare_training_data(run, tiny, ScannedSets.whole([scan(run, sample_data, config.data.trigger_word, None)]),
                          torch.device("cpu"), console)
    assert not old.exists() and fresh.exists()
    assert f"removed 1 temporary file(s) a killed run left in {cache / 'latents'}" in console.export_text()


def test_interrupted_caching_resumes_without_redoing_work(tmp_path, sample_data, tiny, monkeypatch):
    # (batches of 4: a Ctrl-C mid-batch counts those it saved)
    config, cache = setup(tmp_path, sample_data, flip=True, cache_batch_size=4)
    saved = []
    original = TensorStore.save

    def save_then_die(self, key, tensors):
        if len(saved) == 5:
            raise KeyboardInterrupt  # the user hits Ctrl-C, or the runtime is killed, mid-pass
        original(self, key, tensors)
        saved.append(key)

    monkeypatch.setattr(TensorStore, "save", save_then_die)
    console = Console(record=True, width=200)
    run = resolved(config, cache)
    with pytest.raises(KeyboardInterrupt):
        prepare_training_data(run, tiny, ScannedSets.whole([scan(run, sample_data, config.data.trigger_word, None)]),
                              torch.device("cpu"), console)
    # (it said "interrupted" alone, as if the caching were lost)
    assert ("caching stopped: the 5 latents encoded so far are kept in the cache, and the same command goes on from "
            "there") in console.export_text()
    monkeypatch.setattr(TensorStore, "save", original)
    resumed = prepare(config, tiny, sample_data, cache)
    assert resumed.encoded_latents == 12 - 5 and resumed.encoded_texts == 6
    assert not list(cache.rglob("*.tmp"))  # no half-written entry left behind


def test_alpha_mask_is_cached_at_latent_resolution(tmp_path, tiny):
    from PIL import Image

    root = tmp_path / "data" / "1_cut"
    root.mkdir(parents=True)
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 32, 64))  # left half opaque
    image.save(root / "a.png")
    config = run_config(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), alpha_mask=True)
    prepared = prepare(config, tiny, tmp_path / "data", tmp_path / "cache")
    batch = prepared.data.load([0], __import__("random").Random(0))
    assert batch.mask.shape == (1, 1, 32, 32)
    assert batch.mask[0, 0, :, :16].min() == 1.0 and batch.mask[0, 0, :, 16:].max() == 0.0
    # flipped, the mask turns with its image: the opaque half is on the right in the flipped variant
    flipped = run_config(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), alpha_mask=True, flip=True)
    sample = prepare(flipped, tiny, tmp_path / "data", tmp_path / "cache").data.samples[0]
    store = TensorStore(tmp_path / "cache", "latents")
    masks = [store.load(key)["mask"] for key in sample.latent_keys]
    assert len(masks) == 2 and torch.equal(masks[1], masks[0].flip(-1)) and not torch.equal(masks[0], masks[1])


def test_the_caches_size_is_foreseen_with_long_captions_and_masks(tmp_path, tiny, monkeypatch):
    """The free-disk check and the in-memory fallback rest on this estimate: a text entry of --max-token-length 225
    holds 227 tokens' states (counted as 77, it was a third of them), and a masked image's entry its mask."""
    from PIL import Image

    from lowvram.data import prepare as preparing

    root = tmp_path / "data" / "1_cut"
    root.mkdir(parents=True)
    for i in range(4):
        image = Image.new("RGBA", (64, 64), (255, 60 * i, 0, 0))
        image.paste((255, 0, 0, 255), (0, 0, 32, 64))
        image.save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"caption number {i}")
    estimates = []
    real = preparing.estimate_bytes
    monkeypatch.setattr(preparing, "estimate_bytes", lambda *args: estimates.append(real(*args)) or estimates[-1])
    config = run_config(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), alpha_mask=True, flip=True,
                        max_token_length=225)
    prepare(config, tiny, tmp_path / "data", tmp_path / "cache")
    written = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.safetensors"))
    assert estimates[0] == estimates[1]  # all of it to encode
    assert abs(estimates[0] - written) < 0.05 * written, (estimates, written)


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def test_training_on_a_messy_dataset_completes_on_the_good_files(tmp_path):
    expected = write_messy_dataset(tmp_path / "data")
    before = tree_digest(tmp_path / "data")
    result = train(run_config(data=str(tmp_path / "data"), output=str(tmp_path / "out"), max_steps=3,
                              cache_dir=str(tmp_path / "cache")))
    assert result.lora_path.is_file()
    report = result.data_reports[0]
    skipped = {r.relpath: r.reason for r in report.skipped}
    bad = {"truncated.jpg", "tiny.png", "panorama.png", "text.png", "empty.jpg", "anim.gif", "really_a_gif.png"}
    assert set(skipped) == {f"2_messy/{name}" for name in bad}
    for relpath, reason in skipped.items():
        assert expected[relpath] in reason, (relpath, reason)
    assert {r.relpath for r in report.usable} == set(expected) - set(skipped)
    assert result.data.images_per_epoch == 2 * len(report.usable)  # the 2_ folder's repeats
    assert tree_digest(tmp_path / "data") == before  # the user's folder is byte-for-byte unchanged


def test_regularization_images_are_balanced_and_weighted(tmp_path, sample_data, tiny):
    from PIL import Image

    reg = tmp_path / "reg" / "1_shape"
    reg.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (80, 80), (10 * i, 20, 30)).save(reg / f"r{i}.png")
    config = run_config(data=str(sample_data), reg_data=str(tmp_path / "reg"), prior_loss_weight=0.5,
                        cache_dir=str(tmp_path / "cache"), batch_size=1)
    run = resolved(config, tmp_path / "cache")
    reports = [scan(run, sample_data, None, None), scan(run, tmp_path / "reg", None, None)]
    data = prepare_training_data(run, tiny, ScannedSets.whole(reports), torch.device("cpu"), QUIET).data
    assert data.images_per_epoch == 60  # 30 training samples + the 3 regularization images cycled to 30
    weights = sorted(data.samples[i].weight for batch in data.epoch_batches(0) for i in batch)
    assert weights == [0.5] * 30 + [1.0] * 30
    import random

    loaded = sorted(w for batch in data.epoch_batches(0) for w in data.load(batch, random.Random(0), 0).weights.tolist())
    assert loaded == weights  # what the loss is weighted by


def test_regularization_images_no_epoch_reaches_are_not_encoded(tmp_path, sample_data, tiny):
    """40 class images against 30 training samples: every one was encoded (minutes of SDXL's VAE for thousands of
    class images), though 10 never train; kohya leaves them out of its dataset."""
    from PIL import Image

    reg = tmp_path / "reg" / "1_shape"
    reg.mkdir(parents=True)
    for i in range(40):
        Image.new("RGB", (64, 64), (6 * i, 20, 30)).save(reg / f"r{i:02d}.png")
    run = resolved(run_config(data=str(sample_data), reg_data=str(tmp_path / "reg"), batch_size=2,
                              cache_dir=str(tmp_path / "cache")), tmp_path / "cache")
    reports = [scan(run, sample_data, None, None), scan(run, tmp_path / "reg", None, None)]
    prepared = prepare_training_data(run, tiny, ScannedSets.whole(reports), torch.device("cpu"), QUIET)
    training_images = len(reports[0].usable)
    assert prepared.encoded_latents == training_images + 30
    data = prepared.data
    assert data.images_per_epoch == 60 and data.regularization_unused == 10
    import random

    for epoch in range(3):  # every batch of every epoch finds its latents
        for batch in data.epoch_batches(epoch):
            data.load(batch, random.Random(epoch), epoch)


def test_a_run_says_how_its_class_images_balance_and_their_loss_weight(tmp_path, sample_data, capsys):
    """kohya prints the class images' count and the epoch's: lowvram's train said only the training images', and
    its class images' table their own 3 samples, where 30 train each epoch."""
    from PIL import Image

    from lowvram.train.loop import train

    reg = tmp_path / "reg" / "1_shape"
    reg.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 20, 30)).save(reg / f"r{i}.png")
    train(run_config(data=str(sample_data), reg_data=str(tmp_path / "reg"), prior_loss_weight=0.5, max_steps=1,
                     output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache")))
    assert ("regularization: its 3 samples are repeated to 30 each epoch, to match the 30 training samples (kohya's "
            "balance); their loss weighs 0.5 (--prior-loss-weight)") in " ".join(capsys.readouterr().out.split())
    first = next(sample_data.iterdir())  # a kohya file's [[datasets]], said as written (not read as rich's markup)
    (tmp_path / "two.toml").write_text(
        f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{first}'\n[[datasets.subsets]]\nimage_dir = '{reg}'\n"
        f"is_reg = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{first}'\n")
    train(run_config(data=str(tmp_path / "two.toml"), max_steps=1, output=str(tmp_path / "out2"),
                     cache_dir=str(tmp_path / "cache")))
    assert "the training samples of its [[datasets]] entry (kohya's balance); their loss weighs 1" in " ".join(
        capsys.readouterr().out.split())
    # class images that train nothing: in a [[datasets]] entry of their own, or weighing 0
    (tmp_path / "apart.toml").write_text(
        f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{reg}'\nis_reg = true\n[[datasets]]\n"
        f"[[datasets.subsets]]\nimage_dir = '{first}'\n")
    train(run_config(data=str(tmp_path / "apart.toml"), max_steps=1, output=str(tmp_path / "out3"),
                     cache_dir=str(tmp_path / "cache")))
    said = " ".join(capsys.readouterr().out.split())
    assert "warning: regularization: 0 of its 3 samples train each epoch" in said
    assert "none of them trains: an is_reg subset balances the training images of its own [[datasets]] entry" in said
    train(run_config(data=str(sample_data), reg_data=str(tmp_path / "reg"), prior_loss_weight=0, max_steps=1,
                     output=str(tmp_path / "out4"), cache_dir=str(tmp_path / "cache")))
    said = " ".join(capsys.readouterr().out.split())
    assert "warning: regularization: its 3 samples are repeated to 30" in said
    assert "(kohya's balance); their loss weighs 0 (--prior-loss-weight), so they train nothing" in said


def test_class_images_are_never_captioned_with_the_instance_prompt(tmp_path):
    """A diffusers DreamBooth moved over: --caption-template is its --instance_prompt, which class images without a
    caption file must not get (that trains prior preservation as more instance images); they get --class-prompt,
    else their folder's class words, as kohya's."""
    import io

    from PIL import Image

    for folder, colour in (("inst", (200, 0, 0)), ("reg/1_circle", (0, 0, 200))):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), colour).save(tmp_path / folder / f"{folder[-1]}{i}.png")

    def captions(**options) -> dict[str, str]:
        out = io.StringIO()
        train(run_config(data=str(tmp_path / "inst"), reg_data=str(tmp_path / "reg"), max_steps=1,
                         output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), **options),
              console=Console(file=out, width=250))
        rows = re.findall(r"(\S+\.png) .*template used: '([^']*)'", out.getvalue())
        return {Path(name).name: caption for name, caption in rows}

    instance = "a photo of sks circle"
    assert captions(caption_template=instance) == {"t0.png": instance, "t1.png": instance, "e0.png": "circle",
                                                   "e1.png": "circle"}
    assert captions(caption_template="sks {trigger}")["e0.png"] == "circle"
    assert captions(caption_template=instance, class_prompt="a photo of a {trigger}")["e1.png"] == "a photo of a circle"
    for image in (tmp_path / "reg" / "1_circle").iterdir():
        image.unlink()
    with pytest.raises(LowvramError, match="^--reg-data: no images"):  # the flag that names the empty folder
        captions()


def test_check_data_scans_the_regularization_folder_and_says_how_an_epoch_pairs_it(tmp_path, sample_data, capsys):
    """check-data --reg-data listed the training images alone, the regularization folder unscanned."""
    from PIL import Image

    from lowvram.cli import main

    for count in (3, 40):
        reg = tmp_path / f"reg{count}" / "1_shape"
        reg.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (80, 80), (5 * i, 20, 30)).save(reg / f"r{i}.png")
        (reg / "broken.png").write_bytes(b"not an image")
    argv = ["check-data", str(sample_data), "--model", "tiny", "--cache-dir", str(tmp_path / "cache")]
    capsys.readouterr()
    assert main([*argv, "--reg-data", str(tmp_path / "reg3")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "broken.png" in out and "3 of 4 images usable, 1 skipped" in out  # its own table
    # titled as what it is, counted before the balance (it said "3 samples per epoch", then "repeated to 30")
    assert "class images /" in out and "3 samples with repeats, before an epoch draws them" in out  # (a long title wraps)
    assert ("regularization: its 3 samples are repeated to 30 each epoch, to match the 30 training samples (kohya's "
            "balance)") in out
    # the JSON report holds the class images too (a script saw none of them, nor the broken one)
    assert main([*argv, "--reg-data", str(tmp_path / "reg3"), "--report", str(tmp_path / "report.json")]) == 0
    written = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert written["summary"]["usable"] == 6 and written["regularization"]["summary"]["skipped"] == 1
    assert written["regularization"]["balance"].startswith("regularization: its 3 samples are repeated to 30")
    capsys.readouterr()
    assert main([*argv, "--reg-data", str(tmp_path / "reg3"), "--report", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == written
    assert main([*argv, "--reg-data", str(tmp_path / "reg40")]) == 0
    assert ("regularization: 30 of its 40 samples train each epoch, to match the 30 training samples (kohya's "
            "balance); 10 never train") in " ".join(capsys.readouterr().out.split())
    (tmp_path / "reg40" / "1_tree").mkdir()  # a second class after it: none of its images reached, unsaid
    for i in range(3):
        Image.new("RGB", (80, 80), (5 * i, 90, 30)).save(tmp_path / "reg40" / "1_tree" / f"t{i}.png")
    assert main([*argv, "--reg-data", str(tmp_path / "reg40")]) == 0
    assert ("balance); 13 never train, none of 'tree': the balance takes them in order, so fewer class images or more "
            "training repeats give each class its turn") in " ".join(capsys.readouterr().out.split())
    shutil.rmtree(tmp_path / "reg40" / "1_tree")
    # a kohya file's [[datasets]] balance each their own: not against all the training samples
    first, second, reg = next(sample_data.iterdir()), tmp_path / "reg40" / "1_shape", tmp_path / "reg3" / "1_shape"
    (tmp_path / "two.toml").write_text(
        f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{first}'\n[[datasets.subsets]]\nimage_dir = '{reg}'\n"
        f"is_reg = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{second}'\n")
    assert main(["check-data", str(tmp_path / "two.toml"), "--model", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "to match the training samples of its [[datasets]] entry (kohya's balance)" in " ".join(
        capsys.readouterr().out.split())
    # a class image that is a training image trains under both captions
    copy = tmp_path / "reg3" / "1_shape" / "copy.png"
    shutil.copy(next(first.glob("*.png")), copy)
    assert main([*argv, "--reg-data", str(tmp_path / "reg3")]) == 0
    assert (f"warning: 1 class image(s) are copies of training images ({copy} is {next(first.glob('*.png'))}): each "
            "trains as the subject and as its class") in " ".join(capsys.readouterr().out.split())
    copy.unlink()
    # class images captioned with the trigger word (a class folder named as the instance's): prior preservation
    # then trains the subject's word on other images of its class, unsaid
    (tmp_path / "reg3" / "1_shape").rename(tmp_path / "reg3" / "1_lvshape thing")
    assert main([*argv, "--reg-data", str(tmp_path / "reg3"), "--trigger-word", "lvshape"]) == 0
    assert "warning: 3 class image(s) are captioned with the trigger word 'lvshape' (1_lvshape thing/" in " ".join(
        capsys.readouterr().out.split())
    # no --trigger-word (a kohya user names it in the folder): the training folder's name is the subject's caption
    assert main([*argv, "--reg-data", str(tmp_path / "reg3")]) == 0
    assert ("warning: 3 class image(s) are captioned with 'lvshape', a training folder's name (1_lvshape thing/"
            in " ".join(capsys.readouterr().out.split()))
    (tmp_path / "reg3" / "1_lvshape thing").rename(tmp_path / "reg3" / "1_shape")
    # the trigger word in a --caption-prefix: the prefix's, not the class folder's (whose name it blamed)
    assert main([*argv, "--reg-data", str(tmp_path / "reg3"), "--trigger-word", "lvshape", "--caption-prefix",
                 "lvshape,"]) == 0
    assert "captioned with the trigger word" not in capsys.readouterr().out
    # class images that train nothing are a warning, and add nothing to the plan's epoch
    assert main([*argv, "--reg-data", str(tmp_path / "reg3"), "--prior-loss-weight", "0"]) == 0
    assert ("warning: regularization: its 3 samples are repeated to 30 each epoch, to match the 30 training samples "
            "(kohya's balance); their loss weighs 0 (--prior-loss-weight), so they train nothing") in " ".join(
        capsys.readouterr().out.split())
    (tmp_path / "apart.toml").write_text(
        f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{reg}'\nis_reg = true\n[[datasets]]\n"
        f"[[datasets.subsets]]\nimage_dir = '{first}'\n")
    main(["plan", "--model", "tiny", "--data", str(tmp_path / "apart.toml"), "--vram", "8GB"])
    assert "images per epoch with repeats;" in " ".join(capsys.readouterr().out.split())


def test_uncaptioned_class_images_loose_in_their_folder_say_what_they_are_captioned(tmp_path, sample_data, capsys):
    """reg_plain/*.png trained as class 'reg_plain' without a word (kohya reads N_name folders alone)."""
    from PIL import Image

    from lowvram.cli import main

    (tmp_path / "reg_plain").mkdir()
    Image.new("RGB", (64, 64), (90, 20, 30)).save(tmp_path / "reg_plain" / "r.png")
    argv = ["check-data", str(sample_data), "--model", "tiny", "--cache-dir", str(tmp_path / "cache"), "--reg-data",
            str(tmp_path / "reg_plain")]
    assert main(argv) == 0
    assert (f"1 class image(s) at the top level of {tmp_path / 'reg_plain'} without captions are captioned "
            "'reg_plain', the folder's name, as their class; give --class-prompt") in " ".join(
        capsys.readouterr().out.split())
    assert main([*argv, "--class-prompt", "a photo of a shape"]) == 0
    assert "top level of" not in capsys.readouterr().out
    # a folder named as a class-image folder, or as one of images (no caption at all): no class, warned of
    for name, said in (("reg", "are captioned 'reg', the folder's name, as their class"),
                       ("images", "train without a caption (images/ names no class)")):
        (tmp_path / "reg_plain").rename(tmp_path / name)
        assert main([*argv[:-1], str(tmp_path / name)]) == 0
        assert (f"warning: 1 class image(s) at the top level of {tmp_path / name} without captions {said}; give "
                "--class-prompt") in " ".join(capsys.readouterr().out.split())
        (tmp_path / name).rename(tmp_path / "reg_plain")
    (tmp_path / "reg_plain").rename(tmp_path / "1_shape")  # an N_name folder itself: its name is their class
    assert main([*argv[:-1], str(tmp_path / "1_shape")]) == 0
    assert "top level of" not in capsys.readouterr().out


def test_regularization_images_balance_as_kohyas_do():
    """kohya's DreamBoothDataset: each regularization image with all its repeats until there are as many as the
    training samples (the last image may pass the count), then, while short, one more of each in turn."""
    from collections import Counter

    from lowvram.data.augment import CaptionOptions
    from lowvram.data.dataset import Sample, TrainingData

    def data(training: list[float], regularization: list[float]) -> TrainingData:
        def samples(repeats, first):
            return [Sample((f"latent{first + i}",), (), "", (64, 64), r) for i, r in enumerate(repeats)]
        return TrainingData(samples(training, 0), samples(regularization, 1000), 1, 0, CaptionOptions(), None,
                            None, None)

    thirty_five = [3] * 5 + [10] * 2
    whole = data(thirty_five, [20, 20])  # the second image's 20 pass 35: all 40 train, as in kohya
    assert len(whole.expanded(0)) == 35 + 40 and whole.regularization_unused == 0
    short = data(thirty_five, [1] * 4)  # 4, then one more of each in turn to 35
    assert sorted(Counter(short.expanded(0)[35:]).values()) == [8, 9, 9, 9]
    paired = data([6], [2, 2])  # a, a, b, b, then a, b: 3 of each (cycling the copies gave a 4 and a 2)
    assert Counter(paired.expanded(0)[6:]) == {1: 3, 2: 3}
    plenty = data(thirty_five, [1] * 50)  # the first 35 train; kohya warns that some never do
    assert plenty.expanded(0)[35:] == list(range(7, 42)) and plenty.regularization_unused == 15
    assert len(data(thirty_five, []).expanded(0)) == 35
    elsewhere = TrainingData([Sample(("t",), (), "", (64, 64), 2, dataset=1)],
                             [Sample(("r",), (), "", (64, 64), 1, dataset=2)], 1, 0, CaptionOptions(), None, None, None)
    assert elsewhere.expanded(0) == [0, 0]  # a dataset of regularization images alone: none train (kohya)


def test_a_kohya_file_of_several_datasets_balances_each_ones_regularization_images_with_its_own(tmp_path, tiny):
    """kohya balances the regularization images within their dataset: dataset 1's 3 of 15 training samples, not
    all 35 of both datasets' (which made the epoch 70 samples where kohya's is 50)."""
    from collections import Counter

    from PIL import Image

    def folder(name: str, count: int) -> Path:
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (64, 64), (40 * i, 60, 90)).save(tmp_path / name / f"{i}.png")
        return tmp_path / name

    first, second, reg = folder("a", 5), folder("b", 2), folder("cls", 3)
    (tmp_path / "data.toml").write_text(f"""
[[datasets]]
batch_size = 1
  [[datasets.subsets]]
  image_dir = "{first.as_posix()}"
  num_repeats = 3
  [[datasets.subsets]]
  image_dir = "{reg.as_posix()}"
  is_reg = true
[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  image_dir = "{second.as_posix()}"
  num_repeats = 10
""")
    config = run_config(data=str(tmp_path / "data.toml"), cache_dir=str(tmp_path / "cache"))
    run = resolved(config, tmp_path / "cache")
    data_file = tmp_path / "data.toml"
    reports = [scan(run, data_file, None, None), scan(run, data_file, None, None, regularization=True)]
    data = prepare_training_data(run, tiny, ScannedSets.whole(reports), torch.device("cpu"), QUIET).data
    assert data.images_per_epoch == 15 + 20 + 15
    regularization = Counter(data.samples[i].dataset for i in data.expanded(0)[35:])
    assert regularization == {1: 15}


def test_caching_prints_a_line_now_and_then_where_no_bar_redraws(tmp_path, sample_data, tiny, monkeypatch):
    """In a pipe, a notebook or a CI log rich's bar shows only when caching ends: a CI job that stops after minutes
    without output stopped a long caching. A plain line every PLAIN_LINE_SECONDS instead (here: every batch)."""
    import io

    import lowvram.console

    monkeypatch.setattr(lowvram.console, "PLAIN_LINE_SECONDS", 0.0)
    config, cache = setup(tmp_path, sample_data, cache_batch_size=2)
    piped = io.StringIO()
    run = resolved(config, cache)
    prepare_training_data(run, tiny, ScannedSets.whole([scan(run, sample_data, None, None)]), torch.device("cpu"),
                          Console(file=piped))
    lines = [line for line in piped.getvalue().splitlines() if line.startswith("caching latents")]
    assert [line.split(" (")[0] for line in lines] == ["caching latents 2/6", "caching latents 4/6",
                                                       "caching latents 6/6"], piped.getvalue()
    assert re.fullmatch(r"caching latents 2/6 \(\d+ s, [\d.]+/s, \d+:\d\d:\d\d left\)", lines[0]), lines


def test_entries_another_run_wrote_meanwhile_are_not_encoded_again(tmp_path, tiny):
    """Runs of a grid started together on one cache each found every entry missing and each encoded all of them
    (twice the VAE's time, on a GPU its memory too): an entry written since it was found missing is left as it is."""
    from lowvram.data.cache import TextJob, encode_texts
    from lowvram.models.conditioning import encode_prompts

    def encode(captions):
        return encode_prompts(tiny.family, tiny.text_encoders, tiny.tokenizers, captions, torch.device("cpu"))

    ours, theirs = TensorStore(tmp_path, "text"), TensorStore(tmp_path, "text")  # two runs' views of one cache
    jobs = [TextJob("a" * 64, "lvshape, a red circle"), TextJob("b" * 64, "lvshape, a blue square")]
    theirs.save(jobs[0].key, {"hidden": torch.zeros(2, 2)})  # the other run's, written after ours looked
    assert encode_texts(jobs, ours, encode, 4, QUIET) == 1
    assert torch.equal(ours.load(jobs[0].key)["hidden"], torch.zeros(2, 2))  # left as the other run wrote it
    assert ours.load(jobs[1].key)["hidden"].shape[-1] == tiny.text_encoders[0].config.hidden_size
    broken = TextJob("c" * 64, "lvshape, a green triangle")
    ours.path(broken.key).parent.mkdir(parents=True, exist_ok=True)
    ours.path(broken.key).write_bytes(b"not a cache entry")  # there, but no entry: encoded, not taken as written
    assert encode_texts([broken], ours, encode, 4, QUIET) == 1 and ours.valid(broken.key)


def test_the_bucket_info_counts_the_regularization_images_as_an_epoch_pairs_them(tmp_path, sample_data):
    """kohya's ss_bucket_info counts its buckets once the class images are in, as balanced (AUTOMATIC1111's card
    sorts its resolutions by them): lowvram's left them out."""
    import json

    from PIL import Image

    from lowvram.train.metadata import bucket_info

    reg = tmp_path / "reg" / "1_shape"
    reg.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (96, 64), (6 * i, 20, 30)).save(reg / f"r{i}.png")  # another bucket than the 64x64 sample's
    run = resolved(run_config(data=str(sample_data), reg_data=str(tmp_path / "reg"), cache_dir=str(tmp_path / "c")),
                   tmp_path / "c")
    training, regularization = (scan(run, folder, None, None).usable for folder in (sample_data, tmp_path / "reg"))
    counts = {tuple(bucket["resolution"]): bucket["count"]
              for bucket in json.loads(bucket_info(run, training, regularization))["buckets"].values()}
    assert sum(counts.values()) == 60 and counts[(64, 64)] == 30  # 30 training samples, the 3 class images to 30


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_folders_made_in_a_groups_shared_cache_are_the_groups_to_write_in(tmp_path, monkeypatch):
    """A lab's cache (setgid, group-writable): the first student's latents/ and text/ folders took her umask (755),
    and every other student's run warned, re-encoded and wrote nothing."""
    from lowvram.files import atomic_write

    previous = os.umask(0o022)
    try:
        shared, plain = tmp_path / "shared", tmp_path / "plain"
        shared.mkdir(mode=0o775)
        os.chmod(shared, 0o2775)
        plain.mkdir(mode=0o755)
        for root in (shared, plain):
            atomic_write(root / "latents" / "ab" / "x.safetensors", lambda tmp: tmp.write_bytes(b"x"))
        assert [stat.filemode((shared / part).stat().st_mode) for part in ("latents", "latents/ab")] == [
            "drwxrwsr-x"] * 2
        assert stat.filemode((plain / "latents" / "ab").stat().st_mode) == "drwxr-xr-x"  # (a user's own: as was)
    finally:
        os.umask(previous)


def test_a_user_outside_a_shared_caches_group_is_told_to_join_it(tmp_path):
    """A student left out of the lab's group was told to share the cache as a group's folder (chmod 2775): it was
    one already. Named: the group to join, and how."""
    from lowvram.files import cache_sharing_fix

    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("needs root, to give the folder a group this process is not in")
    import pwd

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, -1, 54321)
    os.chmod(shared, 0o2775)
    assert 54321 not in (os.getgid(), *os.getgroups())
    assert cache_sharing_fix(shared) == (f"you are not in its group, 54321: ask to be added (usermod -aG 54321 "
                                         f"{pwd.getpwuid(os.getuid()).pw_name}, then log in again), or give "
                                         "--cache-dir a folder of your own")
    os.chown(shared, -1, os.getgid())  # one's own group's, or no group's: share it so
    for mode in (0o2775, 0o755):
        os.chmod(shared, mode)
        assert cache_sharing_fix(shared).endswith("or share the cache as a group's folder (chmod 2775, see the "
                                                  "README's Caches)")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_what_a_run_writes_in_a_groups_shared_folders_is_the_groups_under_any_umask(tmp_path):
    """A lab's shared cache and output folder (setgid, group-writable) and a student's umask of 077: her cache
    entries were hers alone, so a classmate's run could not mark them used (`cache --unused-for 30d` removed entries
    in use), her lock file kept everyone else's `cache --clear` out, and her checkpoints lost the group (no
    classmate could resume her run)."""
    from lowvram.locks import hold_exclusive
    from lowvram.resolve import IN_USE

    cache, out = tmp_path / "cache", tmp_path / "out"
    for folder in (cache, out):
        folder.mkdir()
        os.chmod(folder, 0o2775)
    previous = os.umask(0o077)
    try:
        train(run_config(output=str(out / "run"), cache_dir=str(cache), max_steps=2, checkpoint_every=1))
        with hold_exclusive(cache / IN_USE):
            pass
    finally:
        os.umask(previous)
    entries = list((cache / "latents").rglob("*.safetensors")) + list((cache / "text").rglob("*.safetensors"))
    assert entries and {stat.filemode(p.stat().st_mode) for p in entries} == {"-rw-rw----"}
    assert stat.filemode((cache / IN_USE / "exclusive.lock").stat().st_mode) == "-rw-rw----"
    step = max((out / "run" / "checkpoints").glob("step-*"))
    assert stat.filemode(step.stat().st_mode) == "drwxrws---"
    assert {stat.filemode(p.stat().st_mode) for p in step.iterdir()} == {"-rw-rw----"}
    assert stat.filemode((out / "run" / "metrics.jsonl").stat().st_mode) == "-rw-rw----"


def test_no_usable_class_image_points_at_a_check_data_command_that_runs(tmp_path, sample_data, capsys):
    """The command the refusal named scanned the class folder as check-data's DIR beside itself as --reg-data:
    refused as --data's own folder."""
    import shlex

    from lowvram.cli import main

    (tmp_path / "reg" / "1_woman").mkdir(parents=True)
    (tmp_path / "reg" / "1_woman" / "a.png").write_text("not an image")
    cache = str(tmp_path / "cache")
    assert main(["train", "--model", "tiny", "--data", str(sample_data), "--reg-data", str(tmp_path / "reg"),
                 "--output", str(tmp_path / "out"), "--cache-dir", cache]) == 2
    command = re.search(r"see `(lowvram check-data [^`]+)`", capsys.readouterr().err).group(1)
    assert shlex.split(command)[2] == str(sample_data)
    assert main(shlex.split(command)[1:]) == 2  # (none usable: its list said why, not a refusal of the command)
    err = capsys.readouterr().err
    assert "--reg-data: no usable images" in err and "is --data's folder" not in err
