"""Buckets, augmentation variants and caption handling."""

import random
from itertools import pairwise

import pytest
import torch
from PIL import Image

from lowvram.data.augment import (
    AugmentOptions,
    CaptionOptions,
    apply_variant,
    auto_variant_count,
    caption_variants,
    make_variant,
    vary_tags,
    weighted_caption_variants,
)
from lowvram.data.buckets import Buckets, bucket_batches, default_buckets
from lowvram.data.captions import expand_wildcards, split_kept_tags


def test_buckets_match_kohyas_for_sd15():
    shapes = default_buckets(512).shapes
    assert (512, 512) in shapes and (256, 1024) in shapes and (1024, 256) in shapes and (576, 448) in shapes
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in shapes)
    assert all(256 <= w <= 1024 and 256 <= h <= 1024 for w, h in shapes)
    assert all(w * h <= 512 * 512 for w, h in shapes)
    assert all((h, w) in shapes for w, h in shapes)
    # sides given off the step are rounded down to it, as kohya's min_bucket_reso (200 made 392x640, 456x512)
    shapes = default_buckets(512, 64, 200, 1000).shapes
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in shapes)
    assert min(min(shape) for shape in shapes) == 192 and max(max(shape) for shape in shapes) == 1024  # (up)


@pytest.mark.parametrize("size", [(800, 600), (600, 800), (1000, 1000), (1920, 1080), (300, 1200), (513, 257)])
def test_each_image_lands_in_the_bucket_nearest_its_aspect_ratio(size):
    buckets = default_buckets(512)
    placement = buckets.place(*size)
    ratio = size[0] / size[1]
    best = min(abs(w / h - ratio) for w, h in buckets.shapes)
    assert abs(placement.bucket[0] / placement.bucket[1] - ratio) == pytest.approx(best)
    # scaled to cover the bucket without distortion
    assert placement.scaled[0] >= placement.bucket[0] and placement.scaled[1] >= placement.bucket[1]
    assert placement.scaled[0] / placement.scaled[1] == pytest.approx(ratio, rel=0.01)


def test_no_upscale_keeps_small_images_at_their_size():
    buckets = default_buckets(512, no_upscale=True)
    assert buckets.place(300, 200).bucket == (256, 192)
    assert buckets.place(300, 200).upscale <= 1.0 + 1e-9
    assert buckets.place(2000, 2000).bucket == (512, 512)
    # a larger one is shrunk to resolution² at its own aspect ratio, as kohya's select_bucket does (its
    # round_to_steps: 3000x1000 -> 768x256, whole, where the nearest regular bucket, 832x256, cropped 8 %)
    assert (buckets.place(3000, 1000).bucket, buckets.place(3000, 1000).kept_fraction) == ((768, 256), 1.0)
    assert buckets.place(1200, 900).bucket == (512, 384)


def test_ties_and_rounding_are_kohyas():
    """kohya's argmin takes the first bucket in sorted order when two are as near (2025x600 at 512: 832x256 and
    896x256), and rounds the scaled size half up (int(x + 0.5), not Python's round half to even)."""
    assert default_buckets(512).place(2025, 600).bucket == (832, 256)
    assert default_buckets(768).place(1920, 512).bucket == (1408, 384)
    assert default_buckets(512).place(360, 1024).scaled == (293, 832)


def test_every_batch_is_one_bucket_and_the_schedule_is_seeded():
    rng = random.Random(0)
    buckets_of = [rng.choice([(512, 512), (576, 448), (448, 576)]) for _ in range(50)]
    fours = [4] * 50
    batches = bucket_batches(buckets_of, fours, seed=7, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert all(len({buckets_of[i] for i in batch}) == 1 for batch in batches)
    assert all(1 <= len(b) <= 4 for b in batches)
    assert batches == bucket_batches(buckets_of, fours, seed=7, epoch=0)
    assert batches != bucket_batches(buckets_of, fours, seed=8, epoch=0)
    assert batches != bucket_batches(buckets_of, fours, seed=7, epoch=1)
    order = [buckets_of[batch[0]] for batch in batches]  # the buckets mixed, not trained one after another
    assert sum(a != b for a, b in pairwise(order)) > len(set(order))
    # a kohya dataset's own batch size: its samples batch apart from the others of their bucket, at their size
    sizes = [2 if i % 5 == 0 else 4 for i in range(50)]
    batches = bucket_batches(buckets_of, sizes, seed=7, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert all(len({(buckets_of[i], sizes[i]) for i in batch}) == 1 and len(batch) <= sizes[batch[0]]
               for batch in batches)


def test_square_only_buckets_when_bucketing_is_off():
    assert Buckets(512, 512, 512, 64).shapes == [(512, 512)]


def test_variants_are_deterministic_and_flip_alternates():
    placement = default_buckets(64, 16).place(100, 80)
    options = AugmentOptions(flip=True, crop="random", color_jitter=0.2, variants=4)
    variants = [make_variant("abc", i, placement, options) for i in range(4)]
    assert variants == [make_variant("abc", i, placement, options) for i in range(4)]
    assert [v.flip for v in variants] == [False, True, False, True]
    assert variants[0].jitter == (1.0, 1.0, 1.0)  # variant 0 is the plain image
    assert len({v.jitter for v in variants}) > 1
    assert variants != [make_variant("abd", i, placement, options) for i in range(4)]


def test_apply_variant_gives_the_bucket_shape_and_really_flips():
    image = Image.new("RGB", (100, 80), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 50, 80))  # left half red
    placement = default_buckets(64, 16).place(100, 80)
    plain = apply_variant(image, placement, make_variant("x", 0, placement, AugmentOptions(flip=True)))
    flipped = apply_variant(image, placement, make_variant("x", 1, placement, AugmentOptions(flip=True)))
    assert plain.size == flipped.size == placement.bucket
    assert plain.getpixel((1, 10))[0] > 200 and flipped.getpixel((1, 10))[0] < 50


def test_crops_stay_inside_the_scaled_image_centred_at_first_and_jitter_leaves_masks_alone():
    """A wide image in a square bucket: the plain variant is cut from the middle, random crops move along the
    slack there is (across, not down); colour jitter changes the image, never an "L" loss mask's weights."""
    from lowvram.data.buckets import Placement

    placement = Placement(bucket=(64, 64), scaled=(128, 64), upscale=1.0)
    options = AugmentOptions(crop="random", color_jitter=0.3, variants=40)
    variants = [make_variant("wide", i, placement, options) for i in range(40)]
    assert variants[0].crop_top_left == (0, 32)
    assert all(v.crop_top_left[0] == 0 and 0 <= v.crop_top_left[1] <= 64 for v in variants)
    assert len({v.crop_top_left for v in variants}) > 10
    image = Image.linear_gradient("L").resize((128, 64))
    jittered = next(v for v in variants if min(abs(j - 1) for j in v.jitter) > 0.05)
    mask = apply_variant(image, placement, jittered)
    left = jittered.crop_top_left[1]
    assert list(mask.getdata()) == list(image.crop((left, 0, left + 64, 64)).getdata())
    rgb = apply_variant(image.convert("RGB"), placement, jittered)
    assert list(rgb.convert("L").getdata()) != list(mask.getdata())


def test_sdxl_size_conditioning_of_a_cropped_and_flipped_image():
    """Original (h, w), crop (top, left) measured from the side the flipped image shows, target (h, w)."""
    from types import SimpleNamespace

    from lowvram.data.augment import Variant
    from lowvram.data.buckets import Placement
    from lowvram.data.cache import sdxl_time_ids

    record = SimpleNamespace(width=1536, height=640)
    placement = Placement(bucket=(1024, 512), scaled=(1228, 512), upscale=1.0)
    for flip, left in ((False, 50), (True, 1228 - 1024 - 50)):
        variant = Variant(flip=flip, crop_top_left=(0, 50), jitter=(1.0, 1.0, 1.0))
        assert sdxl_time_ids(record, placement, variant) == [640, 1536, 0, left, 512, 1024]


def test_auto_variant_count():
    assert auto_variant_count(False, "center", 0.0) == 1
    assert auto_variant_count(True, "center", 0.0) == 2
    assert auto_variant_count(False, "random", 0.0) == 4


def test_shuffle_keeps_the_first_tokens():
    caption, shuffling = "ohwx, dog, grass, sunny, park", CaptionOptions(shuffle_tags=True, keep_tokens=1)
    for seed in range(5):
        shuffled = vary_tags(caption, shuffling, random.Random(seed))
        assert shuffled.startswith("ohwx, ")
        assert sorted(shuffled.split(", ")) == sorted(caption.split(", "))
    assert len({vary_tags(caption, shuffling, random.Random(s)) for s in range(20)}) > 1


def test_tag_dropout_leaves_out_tags_past_the_kept_ones_at_its_rate():
    caption = "ohwx, " + ", ".join(f"tag{i}" for i in range(40))
    dropping = CaptionOptions(keep_tokens=1, tag_dropout=0.25)
    kept = [vary_tags(caption, dropping, random.Random(seed)).split(", ") for seed in range(50)]
    assert all(tags[0] == "ohwx" for tags in kept)  # the kept tag is never dropped, and stays in front
    assert all(tags[1:] == sorted(tags[1:], key=lambda t: int(t[3:])) for tags in kept)  # no shuffle asked
    rate = 1 - sum(len(tags) - 1 for tags in kept) / (40 * 50)
    assert 0.2 < rate < 0.3, rate
    variants = caption_variants(caption, dropping)
    assert len(variants) == 4 and all(len(v) < len(caption) for v in variants)  # each drops some: none is whole


def test_a_keep_tokens_separator_keeps_a_captions_front_and_end_tags_in_place():
    """kohya's keep_tokens_separator: "front ||| shuffled ||| end"; the separator itself is never trained on."""
    caption, kept = split_kept_tags("ohwx, 1girl ||| red hair, smile, hat, dress ||| masterpiece", "|||")
    assert (caption, kept) == ("ohwx, 1girl, red hair, smile, hat, dress, masterpiece", (2, 1))
    assert split_kept_tags("ohwx, dog ||| grass, park", "|||") == ("ohwx, dog, grass, park", (2, 0))
    assert split_kept_tags("ohwx, dog, grass", "|||") == ("ohwx, dog, grass", None)  # then --keep-tokens holds
    varying = CaptionOptions(shuffle_tags=True, keep_tokens=3, tag_dropout=0.2)
    seen = set()
    for seed in range(30):
        tags = vary_tags(caption, varying, random.Random(seed), kept).split(", ")
        assert tags[:2] == ["ohwx", "1girl"] and tags[-1] == "masterpiece"  # not the first --keep-tokens 3
        assert set(tags[2:-1]) <= {"red hair", "smile", "hat", "dress"}
        seen.add(tuple(tags))
    assert len(seen) > 5
    variants = caption_variants(caption, varying, kept)
    assert all(v.startswith("ohwx, 1girl, ") and v.endswith(", masterpiece") for v in variants)
    # with another --caption-separator a tag may hold a comma: "ohwx, man" is one kept tag, as kohya keeps it
    caption, kept = split_kept_tags("ohwx, man ||| red hair; blue eyes", "|||", ";")
    shuffling = CaptionOptions(shuffle_tags=True, separator=";")
    assert {vary_tags(caption, shuffling, random.Random(seed), kept) for seed in range(30)} == {
        "ohwx, man, red hair, blue eyes", "ohwx, man, blue eyes, red hair"}


@pytest.mark.parametrize(("shuffled", "rate"), [(False, 0.1), (True, 0.1), (False, 0.5)])
def test_tag_dropouts_variants_leave_each_tag_out_at_about_its_rate(shuffled, rate):
    """kohya leaves each tag out of a step's caption at --tag-dropout's rate; the cached variants, distinct draws each
    a quarter of the steps, left "alice, 1girl" at 0.1 without 1girl in half of them. A tag every draw leaves out is
    put back into one (it would never train with its image), its others not (they were too: 0.44 at 0.5). Shuffled
    alone, every order cached is as likely."""
    options = CaptionOptions(keep_tokens=1, tag_dropout=rate, shuffle_tags=shuffled)
    for tags in (["smile"], ["smile", "red hair", "hat", "solo"], [f"tag{i}" for i in range(10)]):
        left_out = []
        for n in range(400):
            shares = weighted_caption_variants(", ".join([f"ohwx{n}", *tags]), options)
            assert sum(shares.values()) == pytest.approx(1) and all(v.startswith(f"ohwx{n}") for v in shares)
            left_out += [sum(share for text, share in shares.items() if tag not in text.split(", ")) for tag in tags]
        assert rate - 0.035 < sum(left_out) / len(left_out) < rate + 0.02, (tags, sum(left_out) / len(left_out))
    shares = weighted_caption_variants("ohwx, a, b, c, d", CaptionOptions(keep_tokens=1, shuffle_tags=True))
    assert list(shares.values()) == [0.25] * 4


def test_a_runs_cached_variants_are_drawn_by_their_shares(tmp_path, sample_data):
    """The shares reach the draws: each cached text embedding of a caption is drawn by its own."""
    from conftest import run_config

    from lowvram.train.loop import train

    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("red, circle, blue background, flat")
    result = train(run_config(data=str(sample_data), keep_tokens=1, tag_dropout=0.3, max_steps=1,
                              output=str(tmp_path / "out")))
    sample = next(s for s in result.data.samples if s.caption == "red, circle, blue background, flat")
    shares = weighted_caption_variants(sample.caption, CaptionOptions(keep_tokens=1, tag_dropout=0.3))
    assert len(set(shares.values())) > 1  # (unlike shares: a uniform draw is wrong)
    assert dict(zip(sample.text_keys, sample.text_weights)) == {
        key: shares[text] for key, text in zip(sample.text_keys, shares)}
    # caption lines, shuffled alone: each line as likely, whatever its count of orders (one of 4 trained 4/5)
    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("solo\na, b, c, d")
    result = train(run_config(data=str(sample_data), caption_lines="each", shuffle_tags=True, max_steps=1,
                              output=str(tmp_path / "lines")))
    sample = next(s for s in result.data.samples if s.caption == "solo")
    assert len(sample.text_keys) == 5 and list(sample.text_weights) == [1.0] + [0.25] * 4


def test_every_tag_of_a_caption_trains_in_some_cached_variant():
    """Each of 4 variants leaves a tag out at --tag-dropout 0.2: one of a 40-tag caption was left out of all 4 in
    about 6 % of captions, so it never trained with its image."""
    options = CaptionOptions(keep_tokens=1, tag_dropout=0.2)
    for n in range(200):
        caption = "ohwx, " + ", ".join(f"tag{i}" for i in range(40)) + f", extra{n}"
        variants = caption_variants(caption, options)
        assert {tag.strip() for tag in caption.split(",")} <= {t.strip() for v in variants for t in v.split(",")}


def test_caption_variants_only_when_shuffling():
    assert caption_variants("a, b, c", CaptionOptions()) == ["a, b, c"]
    caption = "a, " + ", ".join(f"tag{i}" for i in range(12))
    variants = caption_variants(caption, CaptionOptions(shuffle_tags=True, keep_tokens=1, variants=4))
    assert all(v.startswith("a, ") for v in variants) and len(variants) == 4
    assert caption not in variants  # each a shuffle: the caption as written is no likelier than another
    assert caption_variants("a", CaptionOptions(shuffle_tags=True, variants=4)) == ["a"]
    # a caption of two tags to move has two orders: both train, though its seeded draws may repeat one (an eighth
    # of such captions trained one order alone for the whole run)
    shuffling = CaptionOptions(shuffle_tags=True, keep_tokens=1, variants=4)
    assert all(len(caption_variants(f"ohwx{i}, smile, outdoors", shuffling)) == 2 for i in range(64))
    assert all(len(caption_variants(f"ohwx{i}, a, b, c", shuffling)) == 4 for i in range(64))


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_each_caption_line_is_a_caption_with_caption_lines_each(tmp_path, sample_data, train_text_encoder):
    """OneTrainer's way with a caption file of several lines: each line is a caption, drawn each time the image is
    trained (cached as a text variant each, or drawn per step when the text encoder trains); kohya's way, the
    default, trains the first and says so."""
    from conftest import run_config

    from lowvram.data.check import scan
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run
    from lowvram.train.loop import train

    caption_file = sample_data / "5_lvshape" / "00_red_circle.txt"
    caption_file.write_text("a red circle\n\nred, circle, blue background\nshape ||| red\n")
    first = scan(resolve_run(run_config(data=str(sample_data)), NO_GPU), sample_data, "zkw", None)
    record = next(r for r in first.usable if r.path.name == "00_red_circle.png")
    assert (record.caption, record.more_captions) == ("zkw, a red circle", ())
    assert "caption lines: the first of 3 is trained (--caption-lines each draws among them)" in record.notes
    result = train(run_config(data=str(sample_data), caption_lines="each", keep_tokens_separator="|||",
                              trigger_word="zkw", train_text_encoder=train_text_encoder, max_steps=1,
                              output=str(tmp_path / "out")))
    sample = next(s for s in result.data.samples if s.caption == "zkw, a red circle")
    assert sample.more_captions == (("zkw, red, circle, blue background", None), ("zkw, shape, red", (2, 0)))
    index = result.data.samples.index(sample)
    if train_text_encoder:  # drawn per step
        drawn = {result.data.load([index], random.Random(seed)).captions[0] for seed in range(30)}
    else:  # each line cached, and drawn among
        drawn = {result.data.text_store.load(key)["hidden"].numpy().tobytes() for key in sample.text_keys}
    assert len(drawn) == 3


def test_a_tag_file_of_a_tag_a_line_is_named_and_joined_with_caption_lines_join(sample_data):
    """gallery-dl's tag files hold a tag a line: kohya's way trained the first tag alone, and the note pointed to
    --caption-lines each, which trains each tag as a caption of its own."""
    from conftest import run_config

    from lowvram.data.check import scan
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    tags = "1girl\naqua_hair\nhatsune_miku \\(cosplay\\)\nlong hair\nsmile\n"
    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text(tags)
    records = {}
    for lines in ("first", "join"):
        checked = scan(resolve_run(run_config(data=str(sample_data), caption_lines=lines), NO_GPU), sample_data,
                       "zkw", None)
        records[lines] = next(r for r in checked.usable if r.path.name == "00_red_circle.png")
    assert records["first"].caption == "zkw, 1girl"
    assert "caption lines: the first of 5 is trained, and they look like tags, one a line (a downloader's tag " \
           "file): --caption-lines join trains them all as one caption" in records["first"].notes
    assert (records["join"].caption, records["join"].more_captions) == (
        "zkw, 1girl, aqua_hair, hatsune_miku \\(cosplay\\), long hair, smile", ())
    assert not any("caption lines" in note for note in records["join"].notes)
    # short captions to draw among (OneTrainer's way) are no tags: the usual note (review: join was offered)
    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("ohwx woman smiling\nohwx portrait photo\nohwx at "
                                                                  "the beach\nohwx red dress\nohwx in snow\n")
    checked = scan(resolve_run(run_config(data=str(sample_data)), NO_GPU), sample_data, "zkw", None)
    record = next(r for r in checked.usable if r.path.name == "00_red_circle.png")
    assert "caption lines: the first of 5 is trained (--caption-lines each draws among them)" in record.notes
    # a paragraph Notepad wrapped: its second sentence lost, the note said only 'each' (a caption per sentence)
    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("An oil painting of a cup on a table.\r\nWarm "
                                                                  "light.\r\n")  # (a short last sentence too)
    checked = scan(resolve_run(run_config(data=str(sample_data)), NO_GPU), sample_data, "zkw", None)
    record = next(r for r in checked.usable if r.path.name == "00_red_circle.png")
    assert ("caption lines: the first of 2 is trained (--caption-lines each draws among them; a paragraph over "
            "several lines trains whole written on one)") in record.notes


def test_wildcards_make_every_combination_a_caption_of_the_image(tmp_path, sample_data):
    """kohya's {a|b|c}: each combination of a caption's choices is one of its captions, drawn in turn; past a limit,
    a fixed choice of them."""
    from conftest import run_config

    from lowvram.data.check import scan
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    assert expand_wildcards("a {red|blue} circle, {big|small}", 64) == (
        ["a red circle, big", "a red circle, small", "a blue circle, big", "a blue circle, small"], 4)
    # as kohya's process_caption: one choice is itself, {{ and }} are braces of the text
    assert expand_wildcards("one choice {here}", 64) == (["one choice here"], 1)
    assert expand_wildcards("a {{logo|text}} {a|b}", 64) == (["a {logo|text} a", "a {logo|text} b"], 2)
    many, count = expand_wildcards("{a|b|c|d} {e|f|g|h} {i|j|k|l}", 10)
    assert count == 64 and len(many) == len(set(many)) == 10
    assert many == expand_wildcards("{a|b|c|d} {e|f|g|h} {i|j|k|l}", 10)[0]  # the same choice every run

    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("a {red|lvshape} circle\nlvshape, circle\n")
    run = resolve_run(run_config(data=str(sample_data), wildcards=True, caption_lines="each"), NO_GPU)
    record = next(r for r in scan(run, sample_data, "lvshape", None).usable if r.path.name == "00_red_circle.png")
    # the trigger word where a caption made lacks it
    assert [record.caption, *(text for text, _ in record.more_captions)] == [
        "lvshape, a red circle", "a lvshape circle", "lvshape, circle"]
    assert "{a|b} choices: one of 3 captions drawn each time the image is trained" in record.notes


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_with_wildcards_each_line_is_drawn_as_often_as_another(tmp_path, sample_data, train_text_encoder):
    """kohya draws a caption line, then its {a|b} choices: a line of four combinations is drawn no more often
    than a line of one, whether the captions are cached or encoded per step."""
    from conftest import run_config

    from lowvram.train.loop import train

    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("{a|b} {c|d} shape\nlvshape, circle\n")
    result = train(run_config(data=str(sample_data), wildcards=True, caption_lines="each", max_steps=1,
                              output=str(tmp_path / "out"), trigger_word="lvshape",
                              train_text_encoder=train_text_encoder))
    sample = next(s for s in result.data.samples if s.caption == "lvshape, a c shape")
    assert sample.caption_weights == (0.125, 0.125, 0.125, 0.125, 0.5)
    index = result.data.samples.index(sample)
    draws = [result.data.load([index], random.Random(seed)) for seed in range(400)]
    if train_text_encoder:
        plain = sum(batch.captions[0] == "lvshape, circle" for batch in draws)
    else:
        assert sample.text_weights == sample.caption_weights  # one variant per caption
        line = result.data.text_store.load(sample.text_keys[-1])["hidden"]
        plain = sum(torch.equal(batch.hidden[0], line) for batch in draws)
    assert 160 < plain < 240  # half of them, not a fifth


def test_a_caption_separator_splits_the_tags_kohya_would(tmp_path, sample_data):
    """kohya's caption_separator: tags split at it for shuffling, --keep-tokens and tag dropout, and joined with
    ", " as kohya joins them; a caption whose tags do not vary stays as written; the trigger word is a tag."""
    from conftest import run_config

    from lowvram.data.check import scan
    from lowvram.dataset_files import read_dataset
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    caption = "ohwx; red hair; smile; hat"
    shuffling = CaptionOptions(shuffle_tags=True, keep_tokens=1, separator=";")
    for seed in range(10):
        tags = vary_tags(caption, shuffling, random.Random(seed)).split(", ")
        assert tags[0] == "ohwx" and sorted(tags[1:]) == ["hat", "red hair", "smile"]
    assert split_kept_tags("ohwx; 1girl ||| red hair, long; smile", "|||", ";") == (
        "ohwx; 1girl; red hair, long; smile", (2, 0))  # "red hair, long" one tag, as kohya splits it
    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("a red circle; blue background")
    report = scan(resolve_run(run_config(data=str(sample_data), caption_separator=";"), NO_GPU), sample_data, "zkw",
                  None)
    record = next(r for r in report.usable if r.path.name == "00_red_circle.png")
    assert record.caption == "zkw; a red circle; blue background"  # the trigger word a tag of its own
    (tmp_path / "data.toml").write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{sample_data}"\n'
                                        'caption_separator = ";"\nshuffle_caption = true\n')
    assert read_dataset(tmp_path / "data.toml").values["caption_separator"] == ";"
    from lowvram.errors import LowvramError

    with pytest.raises(LowvramError, match="--caption-separator: . . is no separator"):
        run_config(caption_separator=" ")


def test_a_secondary_separator_keeps_its_words_one_tag_and_is_trained_as_the_separator(tmp_path, sample_data):
    """kohya's secondary_separator: `red;;;hair` shuffles and drops as one tag, and the text encoder reads
    `red,hair` (kohya replaces it after shuffling), in every variant cached and in the batches alike."""
    from conftest import run_config

    from lowvram.dataset_files import read_dataset
    from lowvram.errors import LowvramError
    from lowvram.train.loop import train

    options = CaptionOptions(shuffle_tags=True, tag_dropout=0.3, secondary_separator=";;;", variants=12)
    variants = caption_variants("ohwx, red;;;hair, smile;;;wide, hat", options)
    assert len(variants) > 3 and not any(";;;" in text for text in variants)
    for text in variants:
        tags = text.split(", ")
        assert all(tag in ("ohwx", "red,hair", "smile,wide", "hat") for tag in tags), text
    assert caption_variants("a;;;b, c", CaptionOptions(secondary_separator=";;;")) == ["a,b, c"]  # unvaried too

    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("a red;;;circle, blue background")
    config = run_config(data=str(sample_data), secondary_separator=";;;", shuffle_tags=True, train_text_encoder=True,
                        output=str(tmp_path / "out"), max_steps=6, batch_size=2)
    result = train(config)
    draws = result.data.batches()
    seen = [caption for _ in range(20) for caption in next(draws)[2].captions]
    assert "red,circle" in " ".join(seen) and not any(";;;" in caption for caption in seen)
    (tmp_path / "data.toml").write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{sample_data}"\n'
                                        'secondary_separator = ";;;"\n')
    assert read_dataset(tmp_path / "data.toml").values["secondary_separator"] == ";;;"
    with pytest.raises(LowvramError, match="--secondary-separator: ',' is no separator of its own"):
        run_config(secondary_separator=",")
