"""What real folders hold beyond the sample: captions saved by Windows tools (UTF-16, upper-case extensions),
trigger words inside other words, 16-bit transparency, kohya's folder names at their edges, and caches or outputs
that cannot be written. Each is read as meant, or said in one line."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import run_config, without_root_override
from PIL import Image

from lowvram.cli import main
from lowvram.data.buckets import default_buckets
from lowvram.data.folders import ScanOptions
from lowvram.data.scan import NoUsableImages, open_training_image, scan_dataset
from lowvram.errors import LowvramError
from lowvram.files import atomic_write

TINY = default_buckets(64, 16)


def picture(path, colour=(200, 80, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), colour).save(path)
    return path


def captions_by_name(report):
    return {record.relpath.rsplit("/", 1)[-1]: record for record in report.records}


def test_captions_saved_as_utf16_or_with_upper_case_extensions_are_read_and_nul_bytes_are_not_text(tmp_path):
    folder = tmp_path / "data" / "10_subj"
    written = {"bom.txt": "utf16 caption, tag".encode("utf-16"),  # Notepad's "Unicode": a byte-order mark
               "bare_be.txt": "big endian, tag".encode("utf-16-be"),  # no mark
               "bare_le.txt": "little endian".encode("utf-16-le"),
               "nul.txt": b"\x00\x01\x02binary\x00\xff",
               "upper.TXT": b"written by a camera",
               "twice.txt": b"\xef\xbb\xbf\xef\xbb\xbfsaved twice, tag",  # a BOM added by each of two tools
               "tagged.txt": b" \r\n", "tagged.caption": b"1girl, smile",  # a tagger's tags beside an empty .txt
               "title.Caption": b"from a tagger",
               "log.txt": b"a log saved as a caption\n" * 50_000,  # 1.2 MB: read whole, one would fill the RAM
               # TextEdit's default: its first line, RTF code, was trained as the caption
               "rich.txt": b"{\\rtf1\\ansi\\ansicpg1252\\cocoartf2709\n{\\fonttbl\\f0\\fswiss Helvetica;}\n"
                           b"\\f0 ohwx dog}"}
    for n, (name, raw) in enumerate(written.items()):
        picture(folder / f"{name.split('.')[0]}.png", (n * 20, 80, 40))
        (folder / name).write_bytes(raw)
    report = captions_by_name(scan_dataset(tmp_path / "data", TINY))
    assert report["bom.png"].caption == "utf16 caption, tag" and not report["bom.png"].notes
    assert report["bare_be.png"].caption == "big endian, tag"
    assert report["bare_le.png"].caption == "little endian"
    assert any("UTF-16 without a byte-order mark" in note for note in report["bare_be.png"].notes)
    assert report["nul.png"].caption == "subj"  # the folder's label, as for a missing caption
    assert "caption unreadable: nul.txt holds NUL bytes, not text: template used: 'subj'" in report[
        "nul.png"].notes
    assert report["upper.png"].caption == "written by a camera"
    assert report["twice.png"].caption == "saved twice, tag"  # (a U+FEFF trained as the first token's part)
    assert report["tagged.png"].caption == "1girl, smile"  # (the template, the folder's name, trained instead)
    assert "both .txt and .caption: used .caption, as the .txt is empty" in report["tagged.png"].notes
    assert report["title.png"].caption == "from a tagger"
    assert report["log.png"].caption == "subj" and "caption file over 1 MiB: not a caption, template used: 'subj'" in (
        report["log.png"].notes)
    assert report["rich.png"].caption == "subj" and ("caption rich.txt is rich text (RTF), not plain text (save it as "
                                                     "plain text: TextEdit's Format > Make Plain Text): template "
                                                     "used: 'subj'") in report["rich.png"].notes
    assert not any(record.non_utf8_caption for record in report.values())  # none of them is read as cp1252


def test_the_trigger_word_is_added_where_the_caption_lacks_it_as_a_word_of_its_own(tmp_path):
    folder = tmp_path / "data" / "10_dog"
    for n, (stem, caption) in enumerate((("tasks", "a dog doing tasks"), ("has", "photo of sks dog"),
                                         ("upper", "SKS dog"), ("inside", "skSks"))):
        picture(folder / f"{stem}.png", (n * 30, 80, 40))
        (folder / f"{stem}.txt").write_text(caption)
    report = captions_by_name(scan_dataset(tmp_path / "data", TINY, ScanOptions(trigger_word="sks")))
    assert {name: record.caption for name, record in report.items()} == {
        "tasks.png": "sks, a dog doing tasks", "has.png": "photo of sks dog", "upper.png": "SKS dog",
        "inside.png": "sks, skSks"}
    # Chinese and Japanese are written without spaces: a word is held wherever it stands (it was added twice)
    (tmp_path / "cjk" / "3_猫娘").mkdir(parents=True)
    for n, (stem, caption) in enumerate((("jp", "猫娘の女の子, smile"), ("zh", "一个猫娘"), ("none", "女の子"))):
        picture(tmp_path / "cjk" / "3_猫娘" / f"{stem}.png", (n * 30, 80, 40))
        (tmp_path / "cjk" / "3_猫娘" / f"{stem}.txt").write_text(caption)
    report = captions_by_name(scan_dataset(tmp_path / "cjk", TINY, ScanOptions(trigger_word="猫娘")))
    assert {name: record.caption for name, record in report.items()} == {
        "jp.png": "猫娘の女の子, smile", "zh.png": "一个猫娘", "none.png": "猫娘, 女の子"}
    # a Latin name written against kana, as Japanese writes it, is there (it was added a second time)
    for stem, caption in (("jp", "ohwxの女の子"), ("zh", "一个ohwx"), ("none", "ohwxsan")):
        (tmp_path / "cjk" / "3_猫娘" / f"{stem}.txt").write_text(caption)
    report = captions_by_name(scan_dataset(tmp_path / "cjk", TINY, ScanOptions(trigger_word="ohwx")))
    assert {name: record.caption for name, record in report.items()} == {
        "jp.png": "ohwxの女の子", "zh.png": "一个ohwx", "none.png": "ohwx, ohwxsan"}
    # a booru tag's _ and space are one (WD14 taggers write either): the trigger was added in its other spelling
    for stem, caption in (("jp", "1girl, ohwx char, smile"), ("zh", "ohwx_char, 1girl"), ("none", "ohwx_charm")):
        (tmp_path / "cjk" / "3_猫娘" / f"{stem}.txt").write_text(caption)
    from lowvram.data.captions import has_word

    assert not has_word("1girl, ohwx char", "_ohwx_char") and not has_word("1girl, ohwx char ,", "ohwx_char_")
    for trigger in ("ohwx_char", "ohwx char"):
        report = captions_by_name(scan_dataset(tmp_path / "cjk", TINY, ScanOptions(trigger_word=trigger)))
        assert {name: record.caption for name, record in report.items()} == {
            "jp.png": "1girl, ohwx char, smile", "zh.png": "ohwx_char, 1girl", "none.png": f"{trigger}, ohwx_charm"}
    # and the trigger ohwx is in ohwx_char as in ohwx char (it was added again before the one, not the other)
    report = captions_by_name(scan_dataset(tmp_path / "cjk", TINY, ScanOptions(trigger_word="ohwx")))
    assert {name: record.caption for name, record in report.items()} == {
        "jp.png": "1girl, ohwx char, smile", "zh.png": "ohwx_char, 1girl", "none.png": "ohwx_charm"}


def test_ai_toolkits_trigger_placeholder_and_simpletuners_file_name_captions(tmp_path):
    """ai-toolkit's captions and sample prompts say [trigger] where its trigger_word goes; it trained as the
    literal "[trigger]" beside the prepended word."""
    folder = tmp_path / "data" / "1_x"
    for n, (stem, caption) in enumerate((("a", "a photo of [trigger], smiling"), ("b", "[trigger] at the beach"))):
        picture(folder / f"{stem}.png", (n * 30, 80, 40))
        (folder / f"{stem}.txt").write_text(caption)
    report = captions_by_name(scan_dataset(tmp_path / "data", TINY, ScanOptions(trigger_word="ohwx")))
    assert {name: (record.caption, record.notes) for name, record in report.items()} == {
        "a.png": ("a photo of ohwx, smiling", ()), "b.png": ("ohwx at the beach", ())}
    (folder / "c.txt").write_text("red style, [trigger], soft light")
    (folder / "d.txt").write_text("[trigger], red style")
    picture(folder / "c.png", (90, 80, 40))
    picture(folder / "d.png", (120, 80, 40))
    report = captions_by_name(scan_dataset(tmp_path / "data", TINY, ScanOptions()))
    # without a trigger word, left out: a tag of its own with its separator (", red style" trained an empty tag)
    assert {name: record.caption for name, record in report.items()} == {
        "a.png": "a photo of, smiling", "b.png": "at the beach", "c.png": "red style, soft light",
        "d.png": "red style"}
    assert "no --trigger-word says what goes there" in report["a.png"].notes[0]
    for stem in "cd":
        (folder / f"{stem}.txt").unlink()
        (folder / f"{stem}.png").unlink()
    (folder / "a.caption").write_text("a sentence")  # the other extension alone: read, and said (kohya reads none)
    (folder / "a.txt").unlink()
    assert captions_by_name(scan_dataset(tmp_path / "data", TINY, ScanOptions()))["a.png"].notes == (
        ("caption read from its .caption file, as it has no .txt (kohya and OneTrainer read one extension alone: "
         "kohya's caption_extension, .caption unless set; OneTrainer's .txt)"),)
    (folder / "a.caption").unlink()
    (folder / "a.txt").write_text("x")
    # SimpleTuner's captions from file names: the template's {filename}
    for stem in ("a", "b"):
        (folder / f"{stem}.txt").unlink()
    (folder / "b.png").rename(folder / "red_circle.png")  # (SimpleTuner's underscores are spaces)
    report = captions_by_name(scan_dataset(tmp_path / "data", TINY, ScanOptions(caption_template="{filename} photo")))
    assert {name: record.caption for name, record in report.items()} == {"a.png": "a photo",
                                                                       "red_circle.png": "red circle photo"}
    # a template without {trigger} lacks the trigger word, prepended as to every caption (the README's claim); an
    # ai-toolkit default_caption's [trigger] takes it
    for template, caption in (("{filename} photo", "ohwx, red circle photo"), ("photo of [trigger]", "photo of ohwx"),
                              ("{trigger} {filename}", "ohwx red circle")):
        options = ScanOptions(caption_template=template, trigger_word="ohwx")
        assert captions_by_name(scan_dataset(tmp_path / "data", TINY, options))["red_circle.png"].caption == caption
    config = run_config(trigger_word="ohwx", sample_prompts=("[trigger], portrait --w 64",))
    assert config.prompt_lines == ("ohwx, portrait --w 64",) and config.samples[0].text == "ohwx, portrait"
    # without one, left out (as its captions'), of the prompt and its negative alike, after the options are read
    assert run_config(sample_prompts=("[trigger] portrait",)).samples[0].text == "portrait"
    unset = run_config(sample_prompts=("[trigger], portrait --n [trigger], blurry --d 3",))
    assert (unset.samples[0].text, unset.samples[0].negative, unset.samples[0].seed) == ("portrait", "blurry", 3)
    assert unset.prompt_lines == ("portrait --n blurry --d 3",)  # (the line generate is given to draw it again)


def test_a_trigger_word_of_one_of_several_concepts_is_said(tmp_path, capsys):
    """kohya's two concepts with the README's --trigger-word: the cat's uncaptioned images trained as 'sks', the
    dog's word, without a word said."""
    for folder, colour in (("20_sks dog", (200, 40, 40)), ("10_ohwx cat", (40, 200, 40)), ("5_sks_toy", (9, 9, 9))):
        picture(tmp_path / "data" / folder / "a.png", colour)
    argv = ["check-data", "--data", str(tmp_path / "data"), "--model", "tiny", "--captions"]
    assert main([*argv, "--trigger-word", "sks"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: --trigger-word 'sks' is in the name of 20_sks dog/, 5_sks_toy/ only: the images of 10_ohwx cat/ "
            "train with it too (those without a caption on it alone, in place of their folder's name); for several concepts leave "
            "--trigger-word out: each N_name folder's name is its images' caption, as in kohya") in said, said
    assert main(argv) == 0  # (each folder's name its images' caption: nothing to say)
    assert "--trigger-word" not in capsys.readouterr().out
    assert main([*argv, "--trigger-word", "zzstyle"]) == 0  # a new style token, no folder's: every concept's images
    said = " ".join(capsys.readouterr().out.split())  # without a caption trained on it alone, unsaid
    assert ("note: --trigger-word 'zzstyle' is in no N_name folder's name: the images of 10_ohwx cat/, 20_sks dog/, "
            "5_sks_toy/ train with it (those without a caption on it alone") in said, said
    shutil.rmtree(tmp_path / "data" / "10_ohwx cat")
    shutil.rmtree(tmp_path / "data" / "5_sks_toy")
    assert main([*argv, "--trigger-word", "zzstyle"]) == 0  # one concept: the trigger is its word
    assert "note: --trigger-word" not in capsys.readouterr().out


def test_concept_words_a_caption_prefix_pushes_into_the_shuffle_are_said(tmp_path, capsys):
    """Several concepts, no --trigger-word (as the README has them): a --caption-prefix took the kept front tag, and
    each folder's concept word shuffled with the rest unsaid. A caption's own tags shuffled as asked are not."""
    for folder, caption in (("5_alice", "alice, 1girl, red hair, smile"), ("20_bob", "bob, 1boy, glasses, hat")):
        for n in range(2):
            picture(tmp_path / "data" / folder / f"img{n}.png", (n * 30, 80, 40))
            (tmp_path / "data" / folder / f"img{n}.txt").write_text(caption)
    argv = ["check-data", "--data", str(tmp_path / "data"), "--model", "tiny", "--shuffle-tags", "--keep-tokens", "1"]
    assert main([*argv, "--caption-prefix", "masterpiece,"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: the concept word of each N_name folder (their names: 'bob', 'alice'), which a --caption-prefix put "
            "past the tags kept, moves with the other tags in 4 of 4 captions (in 20_bob/img0.png's it is tag 2, past "
            "the 1 tag(s) kept in front), as in kohya; to keep it in place, pass --keep-tokens 2") in said, said
    assert "where each caption file starts with it" not in said  # (a prefix's caption never does)
    assert main([*argv, "--caption-prefix", "photo, masterpiece,"]) == 0  # (two tags before it)
    assert "pass --keep-tokens 3" in " ".join(capsys.readouterr().out.split())
    for extra in ([], ["--keep-tokens", "0"]):  # kept in front; or every tag shuffled, as asked
        assert main([*argv, *extra]) == 0
        assert "concept word" not in capsys.readouterr().out
    # a caption of the user's own with the folder's word past its first tag, no prefix: shuffled as asked, unsaid
    for n in range(2):
        (tmp_path / "data" / "5_alice" / f"img{n}.txt").write_text("photo, alice, smile, hat")
    assert main(argv) == 0
    assert "concept word" not in capsys.readouterr().out


def test_kohya_wildcards_without_their_option_are_said(tmp_path, capsys):
    """A kohya dataset's enable_wildcard not carried over: "{red|blue} dress" trained as text, unsaid ("|||" was
    said)."""
    folder = tmp_path / "data" / "10_ohwx"
    for n, caption in enumerate(("ohwx, {red|blue} dress", "ohwx, smile, {{a|b}} logo", "ohwx, {a}")):  # (kohya's
        # escaped braces, and a choice of one: no choices)
        picture(folder / f"img{n}.png", (n * 30, 80, 40))
        (folder / f"img{n}.txt").write_text(caption)
    argv = ["check-data", "--data", str(tmp_path / "data"), "--model", "tiny"]
    assert main(argv) == 0
    assert ("note: 1 of 3 captions hold choices such as {red|blue} (in 10_ohwx/img0.png's), trained as text; pass "
            "--wildcards to draw one of them each time, as kohya's enable_wildcard does") in " ".join(
        capsys.readouterr().out.split())
    assert main([*argv, "--wildcards"]) == 0
    assert "trained as text" not in capsys.readouterr().out


def test_a_trigger_word_the_shuffle_moves_or_the_dropout_drops_is_said(tmp_path, capsys):
    """A --caption-prefix before it, or a caption with it later, shuffled it with the rest without a word: a LoRA
    whose trigger trains anywhere in the caption, and under --tag-dropout without it."""
    folder = tmp_path / "data" / "10_ohwx"
    for n, caption in enumerate(("smile, ohwx, red hair", "ohwx, smile", None)):
        picture(folder / f"img{n}.png", (n * 30, 80, 40))
        if caption:
            (folder / f"img{n}.txt").write_text(caption)
    argv = ["check-data", "--data", str(tmp_path / "data"), "--model", "tiny", "--trigger-word", "ohwx"]
    assert main([*argv, "--shuffle-tags", "--keep-tokens", "1", "--caption-prefix", "masterpiece,"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: the trigger word 'ohwx' moves with the other tags in 2 of 3 captions (in 10_ohwx/img0.png's it "
            "is tag 3, past the 1 tag(s) kept in front), as in kohya; to keep it in place, pass --keep-tokens 3 (2 "
            "where each caption file starts with it, after the --caption-prefix)") in said, said  # (it said 1, which
    # kept the prefix alone in front; img2's 'masterpiece, ohwx': nothing to move)
    assert main([*argv, "--tag-dropout", "0.1", "--keep-tokens", "1"]) == 0
    assert "'ohwx' is left out now and then with the other tags in 1 of 3 captions" in capsys.readouterr().out
    assert main([*argv, "--shuffle-tags", "--keep-tokens", "2"]) == 0
    assert "trigger word" not in capsys.readouterr().out
    assert main(["train", *argv[1:], "--shuffle-tags", "--max-steps", "1", "--output", str(tmp_path / "out")]) == 0
    assert "'ohwx' moves with the other tags in 2 of 3 captions" in " ".join(capsys.readouterr().out.split())
    # a trigger word of two tags, the first kept: its second moved, unsaid (a style's "my style, watercolor")
    two = ["check-data", "--data", str(tmp_path / "data"), "--model", "tiny", "--trigger-word", "ohwx, smile"]
    assert main([*two, "--shuffle-tags", "--keep-tokens", "1"]) == 0
    assert ("note: the trigger word 'ohwx, smile' moves with the other tags in 1 of 3 captions (its 2 tags reach tag "
            "2 in 10_ohwx/img0.png's, past the 1 tag(s) kept in front), as in kohya; to keep it in place, pass "
            "--keep-tokens 2") in " ".join(capsys.readouterr().out.split())
    assert main([*two, "--shuffle-tags", "--keep-tokens", "2"]) == 0
    assert "trigger word" not in capsys.readouterr().out
    # kohya's separator and A1111's weights, trained as text where their options are off (a tagger's "(series)" is
    # no weight)
    (folder / "img0.txt").write_text("(ohwx:1.2), smile, hatsune miku (vocaloid)")
    (folder / "img1.txt").write_text("ohwx, 1girl ||| red hair, smile")
    assert main(argv) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: 1 of 3 captions hold ||| (in 10_ohwx/img1.png's), trained as text; pass --keep-tokens-separator "
            "'|||' to keep the tags before it in front") in said, said
    assert ("note: 1 of 3 captions hold weights such as (ohwx:1.2) (in 10_ohwx/img0.png's), trained as text; pass "
            "--weighted-captions to weigh them as kohya's --weighted_captions does") in said, said
    assert main([*argv, "--weighted-captions", "--keep-tokens-separator", "|||"]) == 0
    assert "trained as text" not in capsys.readouterr().out
    (folder / "img0.txt").write_text("ohwx, hatsune miku (vocaloid)")
    assert main(argv) == 0
    assert "(vocaloid)" not in capsys.readouterr().out
    # weighted, a tagger's "(series)" is emphasis 1.1, as in kohya: said, with how to keep it text
    assert main([*argv, "--weighted-captions"]) == 0
    assert ("note: 1 of 3 captions hold (vocaloid) (in 10_ohwx/img0.png's), which --weighted-captions weighs as "
            "emphasis (1.1 a pair of brackets), as kohya does; write it \\( \\) to train it as text") in " ".join(
        capsys.readouterr().out.split())
    (folder / "img0.txt").write_text("ohwx, (artist:wlop), (red:1.2)")  # (A1111's parser: 'artist:wlop' at 1.1)
    assert main([*argv, "--weighted-captions"]) == 0
    assert "captions hold (artist:wlop) (in 10_ohwx/img0.png's)" in " ".join(capsys.readouterr().out.split())
    (folder / "img0.txt").write_text("ohwx, (red:1.2), (blue: 0.8 )")
    assert main([*argv, "--weighted-captions"]) == 0
    assert "as emphasis" not in capsys.readouterr().out
    (folder / "img0.txt").write_text("ohwx, hatsune miku \\(vocaloid\\)")
    assert main([*argv, "--weighted-captions"]) == 0
    assert "(vocaloid)" not in capsys.readouterr().out
    # emphasis across a comma: a shuffle parts it, its brackets unpaired (said only where tags are varied)
    (folder / "img0.txt").write_text("ohwx, \\(a, b), (red:1.2)")  # (an escaped bracket opens nothing: text)
    assert main([*argv, "--weighted-captions", "--shuffle-tags", "--keep-tokens", "1"]) == 0
    assert "across a" not in capsys.readouterr().out
    (folder / "img0.txt").write_text("ohwx, (smile, blush:1.3), \\(a, b\\), (red:1.2)")
    assert main([*argv, "--weighted-captions"]) == 0
    assert "across a" not in capsys.readouterr().out
    assert main([*argv, "--weighted-captions", "--shuffle-tags", "--keep-tokens", "1"]) == 0
    assert ("note: 1 of 3 captions hold emphasis across a ',', (smile, blush:1.3) (in 10_ohwx/img0.png's), which "
            "shuffling and tag dropout part as two tags, its brackets unpaired (as kohya's do); give each tag its own "
            "brackets, (smile:1.3), (blush:1.3)") in " ".join(capsys.readouterr().out.split())
    # tags parted by a Chinese comma: one tag to a shuffle (kohya's too), said where tags are shuffled
    (folder / "img2.txt").write_text("ohwx，少女，笑顔", encoding="utf-8")
    assert main(argv) == 0
    assert "caption-separator" not in capsys.readouterr().out  # (nothing shuffles them)
    assert main([*argv, "--shuffle-tags", "--keep-tokens", "1"]) == 0
    # the other captions part theirs with ',': replaced in the files, as --caption-separator '，' (the note's advice
    # before) would leave those whole, with a Japanese comma in another (it was not said: the first found only)
    (folder / "img1.txt").write_text("ohwx、少女、笑顔", encoding="utf-8")
    assert main([*argv, "--shuffle-tags", "--keep-tokens", "1"]) == 0
    assert ("note: 2 of 3 captions part their tags with ， and 、 (in 10_ohwx/img2.png's), which a shuffle takes as "
            "one tag, and 1 with ',': replace ， and 、 with ', ' in those captions to shuffle them all "
            "(--caption-separator takes one separator)") in " ".join(capsys.readouterr().out.split())
    for name in ("img0.txt", "img1.txt"):  # the same one in every caption: --caption-separator
        (folder / name).write_text("ohwx，少女", encoding="utf-8")
    assert main([*argv, "--shuffle-tags", "--keep-tokens", "1"]) == 0
    assert ("note: 3 of 3 captions part their tags with ， (in 10_ohwx/img0.png's), which a shuffle takes as one "
            "tag; pass --caption-separator '，' to shuffle and drop them") in " ".join(capsys.readouterr().out.split())
    assert main([*argv, "--shuffle-tags", "--caption-separator", "，"]) == 0
    assert "shuffle takes as one tag" not in capsys.readouterr().out
    (folder / "img2.txt").unlink()
    (folder / "img1.txt").write_text("ohwx, 1girl ||| red hair, smile")
    # a caption past what the text encoders read: said by train only, after the model loaded
    (folder / "img0.txt").write_text(", ".join(f"tag{i} word" for i in range(30)))
    assert main(argv) == 0
    assert ("warning: 1 of 3 images have a caption past 75 tokens, and the text encoders read only their first 75: "
            "shorten them, or add --max-token-length 150 (the longest, 10_ohwx/img0.png's, has 141)") in " ".join(
        capsys.readouterr().out.split())
    (folder / "img0.txt").write_text("ohwx, " + "黒髪の少女が笑顔で立っている" * 4, encoding="utf-8")  # (few words, many tokens)
    assert main(argv) == 0
    assert ("; CLIP reads a Chinese or Japanese character as 1 to 3 tokens, and knows English tags far better" in
            " ".join(capsys.readouterr().out.split()))
    # each caption as it trains, and the tags by how many captions hold them (they were seen only in the LoRA)
    (folder / "img0.txt").write_text("Smile, smile, red hair, red hair")
    assert main([*argv, "--captions", "--caption-prefix", "best,"]) == 0
    said = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in said.splitlines()
            if line.startswith("│ 10_ohwx/img")}
    assert rows == {"10_ohwx/img0.png": "best, ohwx, Smile, smile, red hair, red hair",
                    "10_ohwx/img1.png": "best, ohwx, 1girl ||| red hair, smile", "10_ohwx/img2.png": "best, ohwx"}
    assert ("5 distinct tags; most common: best (3), ohwx (3), smile (2), red hair (1), 1girl ||| red hair (1); 2 in "
            "one caption only; 1 caption(s) hold a tag twice (10_ohwx/img0.png's 'smile', 'red hair')") in " ".join(
        said.split())  # (each tag it repeats: one named alone left the others to find by hand)
    assert "empty tag" not in said
    # a tagger's leftovers, "a, , b" and a trailing comma: trained as written where nothing varies the tags
    (folder / "img0.txt").write_text("smile, , red hair,")
    assert main([*argv, "--captions"]) == 0
    assert ("1 caption(s) hold an empty tag or a trailing separator (10_ohwx/img0.png), trained as written where the "
            "tags are not shuffled or dropped") in " ".join(capsys.readouterr().out.split())


def test_a_16_bit_grey_png_with_a_transparent_level_is_composited_as_its_note_says(tmp_path):
    grey = np.full((96, 96), 40000, np.uint16)
    grey[:, :48] = 0
    path = tmp_path / "data" / "1_x" / "deep.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(grey).save(path, transparency=0)
    record = scan_dataset(tmp_path / "data", TINY).records[0]
    assert any("transparency composited on white" in note for note in record.notes), record.notes
    image, mask = open_training_image(record)
    pixels = np.asarray(image)
    assert mask is None and (pixels[:, :40] == 255).all() and (pixels[:, 56:] == round(40000 * 255 / 65535)).all()
    image, mask = open_training_image(record, ScanOptions(alpha_mask=True))
    assert np.asarray(mask)[:, :40].max() == 0 and np.asarray(mask)[:, 56:].min() == 255


def test_kohya_folder_names_at_their_edges(tmp_path, capsys):
    root = tmp_path / "data"
    picture(root / "10" / "a.png")  # kohya: 10 repeats, no label
    (root / "5_empty").mkdir()
    report = scan_dataset(root, TINY)
    assert [(r.relpath, r.caption) for r in report.records] == [("10/a.png", "")]
    assert report.summary()["samples_per_epoch"] == 10
    assert ("no images in 5_empty/ (.png, .jpg, .jpeg, .webp, .bmp, .jfif, .tif, .tiff, .avif): nothing of it trains"
            in report.folder_notes)
    assert not any("10/" in note for note in report.folder_notes)
    # typed with a Japanese IME: full-width digits and underscore, alike on screen
    wide = tmp_path / "wide"
    picture(wide / "１０＿キャラ" / "c.png")
    picture(wide / "3＿猫" / "d.png")
    report = scan_dataset(wide, TINY)
    assert sorted((r.relpath, r.caption) for r in report.records) == [("3＿猫/d.png", "猫"),
                                                                      ("１０＿キャラ/c.png", "キャラ")]
    assert report.summary()["samples_per_epoch"] == 13 and not report.folder_notes

    subject = tmp_path / "only" / "10_my subject"  # --data names the N_name folder itself, not its parent
    picture(subject / "b.png")
    report = scan_dataset(subject, TINY)
    assert [(r.caption, report.summary()["samples_per_epoch"]) for r in report.records] == [("my subject", 10)]
    assert ("10_my subject/ is itself an N_name folder: read as one (10 repeats), as kohya reads it inside the "
            "folder it asks for") in report.folder_notes


def test_a_cache_or_output_under_a_file_is_said_in_one_line(tmp_path, sample_data, capsys):
    """A cache that cannot be written falls back to memory (tests/test_faults.py fills its disk); one under a file
    is the option's mistake, said before anything is scanned or cached."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(LowvramError, match=f"could not write {blocker / 'x' / 'y.json'}: {blocker} is a file, not a"):
        atomic_write(blocker / "x" / "y.json", lambda tmp: tmp.write_text("{}"))
    common = ["--model", "tiny", "--data", str(sample_data), "--resolution", "64", "--max-steps", "1"]
    for command in (["check-data", *common[:4]], ["train", *common, "--output", str(tmp_path / "run")]):
        assert main([*command, "--cache-dir", str(blocker / "cache")]) == 2
        assert capsys.readouterr().err.strip() == (f"lowvram {command[0]}: error: --cache-dir: {blocker} is a file, "
                                                   "not a folder; give a folder, or leave --cache-dir out for "
                                                   "lowvram's own")
    assert not (tmp_path / "run").exists()

    assert main(["train", *common, "--output", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"lowvram train: error: --output: can't write in {blocker / 'run'}: {blocker} is a file, "
                           "not a folder; choose an --output folder you can write to")


def test_a_dataset_file_whose_folders_share_the_home_folder_the_cache_is_in_scans(tmp_path, capsys):
    home = tmp_path / "home"
    for folder in ("img/10_alice", "reg/1_woman"):
        picture(home / folder / "0.png")
    dataset = home / "train" / "dataset.toml"
    dataset.parent.mkdir()
    dataset.write_text(tomli_w.dumps({"datasets": [{"subsets": [
        {"image_dir": str(home / "img" / "10_alice")},
        {"image_dir": str(home / "reg" / "1_woman"), "is_reg": True}]}]}))
    assert main(["check-data", "--model", "tiny", "--cache-dir", str(home / ".cache" / "lowvram"), str(dataset)]) == 0
    inside = home / "img" / "10_alice" / "cache"
    assert main(["check-data", "--model", "tiny", "--cache-dir", str(inside), str(dataset)]) == 2
    assert (f"--cache-dir: the cache ({inside}) is inside the dataset folder {home / 'img' / '10_alice'}, which "
            "lowvram never writes to; choose a cache folder outside it") in capsys.readouterr().err
    shutil.rmtree(inside, ignore_errors=True)


def test_names_that_are_no_utf8_train_and_are_written_garbled_not_crashed_on(tmp_path, capsys):
    """A zip of a Japanese Windows unpacked without -O cp932 names its files in Shift_JIS bytes: the run trained,
    then lost its LoRA to a UnicodeEncodeError in the metadata at its save, and check-data's report crashed."""
    import json
    import os

    from safetensors import safe_open

    folder = os.fsencode(tmp_path / "data") + b"/5_\x94L\x96\xba"  # 5_猫娘 in Shift_JIS
    try:
        os.makedirs(folder)
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    for i in range(2):
        image = os.fsdecode(folder + b"/\x89\xe6\x91\x9c" + str(i).encode() + b".png")
        Image.new("RGB", (64, 64), (90 * i, 80, 40)).save(image)
        with open(image[:-4] + ".txt", "w") as caption:
            caption.write("lvshape, a thing")
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
                 "--max-steps", "1"]) == 0
    lora = tmp_path / "out" / "out.safetensors"
    with safe_open(str(lora), "pt") as f:
        frequency = json.loads(f.metadata()["ss_tag_frequency"])
    assert list(frequency) == ["5_\ufffdL\ufffd\ufffd"]
    assert main(["check-data", "--model", "tiny", "--data", str(tmp_path / "data"), "--report",
                 str(tmp_path / "report.json")]) == 0
    assert json.loads((tmp_path / "report.json").read_text())
    assert "4 name(s) in 5_" in capsys.readouterr().out  # two images, two captions
    for caption in Path(os.fsdecode(folder)).glob("*.txt"):  # the folder's label is their caption: text too
        caption.unlink()
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
                 "--max-steps", "1", "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "tiny", "--data", os.fsdecode(folder), "--output", str(tmp_path / "there"),
                 "--max-steps", "1"]) == 0
    assert "a path of this run is no UTF-8 text, so" in " ".join(capsys.readouterr().out.split())  # its .toml


def test_free_text_in_another_encoding_is_refused_by_flag_and_a_c_locales_is_read_again(capsys):
    """A Shift_JIS terminal's trigger word reached the tokenizer (a TypeError traceback); under a C locale without
    UTF-8 mode, UTF-8 arguments come as surrogates, which are read again."""
    from lowvram.cli_parser import build_parser, utf8_text_arguments

    parser = build_parser()
    c_locale = "ねこ".encode().decode("ascii", "surrogateescape")
    args, _ = parser.parse_known_args(["train", "--model", "tiny", "--data", "sample", "--trigger-word", c_locale,
                                       "--sample-prompt", "a", "--sample-prompt", c_locale])
    utf8_text_arguments(args, parser._subparsers._group_actions[0].choices["train"])
    assert (args.trigger_word, list(args.sample_prompts)) == ("ねこ", ["a", "ねこ"])
    shift_jis = "ねこ".encode("cp932").decode("utf-8", "surrogateescape")
    for flag in ("--sample-prompt", "--metadata-license", "--caption-separator"):  # (every free-text option's)
        assert main(["train", "--model", "tiny", "--data", "sample", flag, shift_jis]) == 2
        assert f"{flag}: b'\\x82\\xcb\\x82\\xb1' is not UTF-8 text" in capsys.readouterr().err


def test_a_cjk_dataset_is_checked_and_trained_under_an_ascii_locale(tmp_path):
    """LC_ALL=C without UTF-8 mode: Python reads file names as ASCII with escaped bytes, which the scan index's key
    refused to encode (a traceback); check-data called those UTF-8 names "not UTF-8", and a finished run crashed
    writing its sample's infotext, which named the output."""

    import os
    import subprocess
    import sys

    picture(tmp_path / "データ" / "5_猫娘" / "画像.png", (200, 80, 40))
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "lowvram", "check-data", str(tmp_path / "データ")], env=env,
                          capture_output=True, text=True, errors="replace", timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 images usable" in done.stdout
    assert "not UTF-8" not in done.stdout
    done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data",
                           str(tmp_path / "データ"), "--output", str(tmp_path / "猫娘"), "--max-steps", "1",
                           "--sample-prompt", "a cat"], env=env, capture_output=True, text=True, errors="replace",
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "not UTF-8" not in done.stdout and "no UTF-8" not in done.stdout
    assert "猫娘" in Image.open(next((tmp_path / "猫娘" / "samples").glob("*.png"))).text["parameters"]


def test_a_folder_that_cannot_be_read_is_skipped_and_a_dataset_that_cannot_be_is_one_line(tmp_path):
    """On a shared server: another user's private folder in the dataset (or lost+found on a mounted disk) ended
    check-data and train in a PermissionError traceback."""
    import os
    import subprocess
    import sys

    as_a_user = without_root_override()
    data = tmp_path / "data"
    picture(data / "5_a" / "a.png")
    picture(data / "3_b" / "b.png")
    (data / "private").mkdir()

    def check_data():
        return subprocess.run([*as_a_user, sys.executable, "-m", "lowvram", "check-data", str(data)],
                              capture_output=True, text=True, check=False, timeout=300,
                              env={**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")})

    for folder in (data / "3_b", data / "private"):
        folder.chmod(0)
    try:
        done = check_data()
        assert done.returncode == 0, done.stderr
        out = " ".join(done.stdout.split())
        assert "skipped folder 3_b/: can't read it (Permission denied)" in out
        assert "skipped folder private/: can't read it (Permission denied)" in out and "1 of 1 images usable" in out
        data.chmod(0)
        done = check_data()
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"--data: {data} cannot be read (Permission denied)" in done.stderr
    finally:
        for folder in (data, data / "3_b", data / "private"):
            folder.chmod(0o755)


def test_a_named_pipe_among_the_images_is_skipped_not_waited_on(tmp_path):
    """check-data, plan and train waited for ever reading it."""
    folder = tmp_path / "data" / "3_x"
    picture(folder / "a.png", (90, 80, 40))
    os.mkfifo(folder / "pipe.png")
    report = scan_dataset(tmp_path / "data", TINY, ScanOptions())
    assert [(record.relpath, record.reason) for record in report.skipped] == [
        ("3_x/pipe.png", "not a regular file (a named pipe or a device): not read")]


def test_the_images_in_folders_passed_over_are_counted_once_and_no_others(tmp_path, monkeypatch):
    """Label files, a metadata file's unnamed images (its own note), a linked N_name folder, a year's folder the
    metadata file names: none of them is an image in a folder passed over."""
    import json

    data = tmp_path / "data"
    picture(data / "10_dog" / "a.png")
    picture(data / "10_dog" / "a-condlabel.png")  # (OneTrainer's label files beside an image: no images)
    picture(data / "10_dog" / "b-MaskLabel.png")
    picture(data / "elsewhere" / "5_cat" / "c.png")
    (data / "8_cat").symlink_to(data / "elsewhere" / "5_cat")  # a linked N_name folder trains
    for name in ("x.png", "y.png"):
        picture(data / "2019" / name)
    picture(data / "misc" / "deep" / ".hidden" / "z.png")  # (a hidden folder's: nothing of the dataset)
    picture(data / "misc" / "deep" / "w.png")
    report = scan_dataset(data, TINY, ScanOptions())
    assert report.passed_over == 2 + 1  # 2019/ and misc/ (elsewhere/ holds 8_cat's images: they train)
    assert report.passed_over_count == "3"
    from lowvram.data import folders

    monkeypatch.setattr(folders, "COUNTED_UP_TO", 2)  # (a Drive given whole: its first files, all told, looked at)
    report = scan_dataset(data, TINY, ScanOptions())
    assert report.passed_over_more and report.passed_over_count == f"at least {report.passed_over}"
    assert any(note.startswith("skipped folder misc/: not named") for note in report.folder_notes)  # (not counted)
    monkeypatch.undo()
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "2019/x.png", "text": "a year"}) + "\n")
    report = scan_dataset(data, TINY, ScanOptions())
    assert "2019/x.png" in {record.relpath for record in report.usable}
    assert not any(note.startswith("skipped folder 2019/") for note in report.folder_notes), report.folder_notes


def test_a_runs_output_folder_inside_the_dataset_is_no_part_of_it(tmp_path, capsys):
    """--output inside a flat dataset: the next run offered the first run's samples as images to train ("rename it
    10_lora1 to train it"), and a kohya layout's repeats folders trained them."""
    from lowvram.train.loop import train

    for n in range(2):
        picture(tmp_path / "flat" / f"{n}.png", (n * 60, 80, 40))
    train(run_config(data=str(tmp_path / "flat"), output=str(tmp_path / "flat" / "lora1"), max_steps=1,
                     sample_prompts=("lvshape",), sample_steps=2))
    assert (tmp_path / "flat" / "lora1" / "samples" / "lora1-00.png").is_file()
    report = scan_dataset(tmp_path / "flat", TINY, ScanOptions())
    assert [record.relpath for record in report.usable] == ["0.png", "1.png"]
    assert not any("lora1" in note for note in report.folder_notes), report.folder_notes
    with pytest.raises(LowvramError, match=r"--data: .*lora1 is a lowvram run's output folder, not a dataset; give the "
                                           r"folder of the images to train \(its run trained on .*flat\)"):
        scan_dataset(tmp_path / "flat" / "lora1", TINY, ScanOptions())  # (its samples/ offered as images to rename)
    shutil.copytree(tmp_path / "flat" / "lora1", tmp_path / "kohya" / "10_out")  # (its record: no repeats folder)
    picture(tmp_path / "kohya" / "5_dog" / "a.png")
    assert [record.relpath for record in scan_dataset(tmp_path / "kohya", TINY, ScanOptions()).usable] == [
        "5_dog/a.png"]


def test_a_panorama_its_bucket_crops_is_said_with_what_it_keeps(tmp_path):
    """An 8:1 panorama in SDXL's widest bucket lost half of itself without a word (a 10:1 one is skipped, said)."""
    from lowvram.data.buckets import Buckets

    Image.new("RGB", (512, 64), (90, 80, 40)).save(picture(tmp_path / "data" / "wide.png"))
    picture(tmp_path / "data" / "square.png")
    report = captions_by_name(scan_dataset(tmp_path / "data", default_buckets(1024), ScanOptions()))
    assert ("cropped to its bucket 2048x512, keeping 50% of the image (crop or split it to train all of it)"
            in report["wide.png"].notes), report["wide.png"].notes
    assert not any("cropped" in note for note in report["square.png"].notes)
    square_only = scan_dataset(tmp_path / "data", Buckets(1024, 1024, 1024), ScanOptions(min_kept_fraction=0.1))
    # (a photo's square crop is every photo's, unsaid; an 8:1 panorama's, which keeps an eighth, is said)
    assert {record.relpath for record in square_only.usable if any("cropped" in note for note in record.notes)} == {
        "wide.png"}


def test_a_folder_named_by_a_date_is_not_read_as_millions_of_repeats(tmp_path, capsys):
    """20240101_vacation trained 20,240,101 repeats: train sat at 15 GB listing its epoch, 100000000_x was killed."""
    for name in ("20240101_vacation", "2_kept", "2019", "2020_summer/sea"):  # (an archive's years trained 2019 times)
        picture(tmp_path / "data" / name / "a.png", (90, 80, 40))
    report = scan_dataset(tmp_path / "data", TINY, ScanOptions())
    assert [record.relpath for record in report.usable] == ["2_kept/a.png"]
    assert ("skipped folder 20240101_vacation/ (1 image in it and below do not train): 20240101 repeats is past 10000, "
            "a date or a number rather than repeats; name it N_name with N the repeats (10_vacation)"
            in report.folder_notes)
    assert ("skipped folder 2019/ (1 image in it and below do not train): 2019 is a year rather than repeats; name it "
            "N_name with N the repeats (10_name)") in report.folder_notes
    assert any(note.startswith("skipped folder 2020_summer/ (1 image in") for note in report.folder_notes)
    assert report.passed_over == 3  # ("1 of 1 images usable, 0 skipped" said nothing of them)
    assert main(["plan", "--data", str(tmp_path / "data"), "--model", "tiny", "--vram", "6GB"]) == 0
    assert "1 usable images, 0 skipped, 3 in folders it passes over" in capsys.readouterr().out
    # --data naming the year's folder itself: its images, once each (it read as 2019 repeats)
    assert [(r.relpath, r.repeats) for r in scan_dataset(tmp_path / "data" / "2019", TINY).usable] == [("a.png", 1)]
    from lowvram.dataset_files.subsets import folder_label

    assert [folder_label(Path(name)) for name in ("2019", "2019_summer", "10_cat")] == ["2019", "2019_summer", "cat"]
    shutil.rmtree(tmp_path / "data" / "2_kept")  # (years alone: each named, to rename, as any folder not N_name)
    shutil.rmtree(tmp_path / "data" / "20240101_vacation")
    with pytest.raises(NoUsableImages, match=r"; 2019/ holds images but is not named N_name: rename it to 10_2019 "
                                             r"\(each image 10 times per epoch\), or give --data "):
        scan_dataset(tmp_path / "data", TINY, ScanOptions())


def test_a_caption_template_no_image_takes_is_said(tmp_path, capsys):
    """A diffusers user's --instance_prompt, given as --caption-template as the hint says, beside caption files
    left in the folder: every image trained on its own caption, and nothing said."""
    folder = tmp_path / "data" / "10_dog"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "a.png")
    (folder / "a.txt").write_text("a leftover caption")
    argv = ["check-data", str(tmp_path / "data"), "--model", "tiny", "--caption-template", "a photo of sks dog"]
    assert main(argv) == 0
    assert ("note: --caption-template 'a photo of sks dog' captions none of the 1 images: each has its own caption (a "
            "caption file or a metadata row), which trains instead; the template is for images without one") in " ".join(
        capsys.readouterr().out.split())
    (folder / "a.txt").unlink()
    assert main(argv) == 0
    assert "captions none" not in capsys.readouterr().out


def test_sentence_captions_a_shuffle_would_cut_are_said(tmp_path, capsys):
    """An illustrator's own sentences under --preset style, which shuffles tags: cut at each comma and reordered,
    unsaid (kohya shuffles only when asked)."""
    folder = tmp_path / "data" / "10_style"
    folder.mkdir(parents=True)
    for name, caption in (("a", ("an oil painting of a cup on a table, painted with thick impasto brushstrokes and "
                                "palette knife marks, in a warm ochre palette")), ("b", "elodiestyle, 1girl, red hair")):
        Image.new("RGB", (64, 64)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption)
    argv = ["check-data", str(tmp_path / "data"), "--model", "tiny"]
    assert main([*argv, "--preset", "style"]) == 0
    assert ("note: 1 of 2 captions are sentences (in 10_style/a.png's, 'painted with thick impasto brushstrokes and "
            "palette knife …'), which tag shuffling cuts at each ',' and reorders; pass --no-shuffle-tags to train them "
            "as written") in " ".join(capsys.readouterr().out.split())
    assert main(argv) == 0
    assert "are sentences" not in capsys.readouterr().out  # (nothing cuts them)
    # short clauses are cut too; a trigger and one sentence, the trigger kept, have nothing to move (review)
    (folder / "a.txt").write_text("A woman sits on a chair, holding a cup, smiling at the camera, in a bright room.")
    (folder / "b.txt").write_text("ohwx, a photo of a woman with red hair standing in a park")
    assert main([*argv, "--preset", "character"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "note: 1 of 2 captions are sentences (in 10_style/a.png's" in said, said


def test_a_folder_given_as_data_named_with_the_trigger_keeps_its_class_word(tmp_path):
    """The diffusers scripts' instance folder, 'ohwx dog', given as --data with --trigger-word ohwx: its uncaptioned
    images trained 'ohwx', without the class word the class prompt shares (as an N_name folder's keep it)."""
    folder = tmp_path / "ohwx dog"
    picture(folder / "a.png", (90, 80, 40))
    report = captions_by_name(scan_dataset(folder, TINY, ScanOptions(trigger_word="ohwx")))
    assert report["a.png"].caption == "ohwx dog"
    for name in ("photos", "ohwx_photos", "my-ohwx-set"):  # (not of its words: the trigger word alone, as before)
        other = tmp_path / name
        picture(other / "a.png", (90, 80, 40))
        assert captions_by_name(scan_dataset(other, TINY, ScanOptions(trigger_word="ohwx")))["a.png"].caption == \
            "ohwx", name
