"""Dataset scanning: captions, kohya repeat folders, trigger words, cropping for SDXL conditioning."""

from PIL import Image

from lowvram.data.dataset import TrainingData, load_example, scan_images


def make_image(path, size=(80, 64), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def test_repeat_folders_captions_and_templates(tmp_path):
    make_image(tmp_path / "top.png")
    (tmp_path / "top.txt").write_text("\n  a caption on line two  \nignored third line\n")
    make_image(tmp_path / "10_sks dog" / "a.jpg")
    (tmp_path / "10_sks dog" / "a.caption").write_text("from the caption file")
    make_image(tmp_path / "10_sks dog" / "b.png")  # no caption: folder name through the template
    make_image(tmp_path / "misc" / "c.png")  # not N_name: skipped with a note
    items, notes = scan_images(tmp_path, caption_template="a photo of {trigger}")
    by_name = {item.path.name: item for item in items}
    assert set(by_name) == {"top.png", "a.jpg", "b.png"}
    assert by_name["top.png"].caption == "a caption on line two" and by_name["top.png"].repeats == 1
    assert by_name["a.jpg"].caption == "from the caption file" and by_name["a.jpg"].repeats == 10
    assert by_name["b.png"].caption == "a photo of sks dog"
    assert any("misc" in note for note in notes)


def test_caption_extension_preference(tmp_path):
    make_image(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("txt caption")
    (tmp_path / "x.caption").write_text("caption caption")
    assert scan_images(tmp_path)[0][0].caption == "txt caption"
    assert scan_images(tmp_path, caption_extension=".caption")[0][0].caption == "caption caption"


def test_trigger_word_is_prepended_only_when_missing(tmp_path):
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a dog on grass")
    make_image(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("ohwx dog sitting")
    items, _ = scan_images(tmp_path, trigger_word="ohwx")
    assert [i.caption for i in items] == ["ohwx, a dog on grass", "ohwx dog sitting"]


def test_load_example_crops_to_a_square_and_records_sdxl_conditioning(tmp_path):
    make_image(tmp_path / "wide.png", (200, 100))
    item = scan_images(tmp_path)[0][0]
    example = load_example(item, 64)
    assert example.pixels.shape == (3, 64, 64)
    assert -1.0 <= example.pixels.min() and example.pixels.max() <= 1.0
    assert example.original_size == (100, 200)  # (height, width) as SDXL's add_time_ids expect
    assert example.crop_top_left == (0, 32)  # resized to 128x64, centre crop starts 32 px in


def test_transparent_images_are_composited_on_white(tmp_path):
    make_image(tmp_path / "clear.png", (64, 64), mode="RGBA")  # fully transparent black
    example = load_example(scan_images(tmp_path)[0][0], 64)
    assert example.pixels.min() == 1.0  # white, not black


def test_epoch_order_is_seeded_and_covers_every_repeat(tmp_path):
    for name in "abc":
        make_image(tmp_path / "3_x" / f"{name}.png")
    items, _ = scan_images(tmp_path)
    data = TrainingData(items, 64, batch_size=2, seed=1)
    assert sorted(data.epoch_order(0)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.epoch_order(0) == TrainingData(items, 64, 2, seed=1).epoch_order(0)
    assert data.epoch_order(0) != data.epoch_order(1) or data.epoch_order(0) != data.epoch_order(2)
    assert data.batches_per_epoch == 5
