"""What Windows does differently, caught on Linux: files flushed only through a handle opened for writing, text
files as Windows editors save them (a byte-order mark, UTF-16, the ANSI code page) read as training reads them,
and the originals of edited captions kept byte for byte."""

import ast
import codecs
import os
import subprocess
from pathlib import Path

from lowvram.data.captions import read_caption_text
from lowvram.data.sample import write_sample_dataset
from lowvram.dataset_files import read_dataset
from lowvram.prompts import read_prompt_file
from lowvram.ui import dataset as data_panel

PACKAGE = Path(__file__).parents[1] / "lowvram"


def test_every_fsync_is_on_a_file_opened_for_writing():
    """Windows flushes no file opened read-only (os.fsync fails with EBADF): every checkpoint save failed there."""
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.With):
                continue
            modes = {item.optional_vars.id: item.context_expr.args[1].value for item in node.items
                     if isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") == "open"
                     and isinstance(item.optional_vars, ast.Name) and len(item.context_expr.args) > 1
                     and isinstance(item.context_expr.args[1], ast.Constant)}
            for inner in ast.walk(node):
                if (isinstance(inner, ast.Call) and ast.unparse(inner.func) == "os.fsync"
                        and isinstance(inner.args[0], ast.Call)):
                    handle = ast.unparse(inner.args[0].func).removesuffix(".fileno")
                    if handle in modes and not set(modes[handle]) & set("wa+"):
                        wrong.append(f"{path.relative_to(PACKAGE.parent)}:{inner.lineno} ({modes[handle]!r})")
    assert not wrong, wrong


def test_text_files_saved_by_windows_editors_are_read_as_written(tmp_path):
    images = write_sample_dataset(tmp_path / "data") / "5_lvshape"
    dataset = tmp_path / "dataset.toml"
    text = f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{images.as_posix()}"\nnum_repeats = 3\n'
    dataset.write_bytes(codecs.BOM_UTF8 + text.encode())  # Notepad's UTF-8
    assert read_dataset(dataset).folders(False)[0].repeats == 3
    dataset.write_bytes(text.encode("utf-16"))  # PowerShell 5's `>`
    assert read_dataset(dataset).folders(False)[0].repeats == 3
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(codecs.BOM_UTF8 + b"# my prompts\nlvshape, a red circle --w 64 --h 64\n")
    assert read_prompt_file(prompts)[0] == ["lvshape, a red circle --w 64 --h 64"]  # the comment stays a comment


def test_an_edited_captions_original_is_kept_byte_for_byte_and_shown_decoded(tmp_path):
    """Notepad's "Unicode" (UTF-16) and ANSI (cp1252) captions, which training reads: the web UI showed them as
    UTF-8 read with replacement characters, and kept that garbled text as the original."""
    root = write_sample_dataset(tmp_path / "data")
    image = min(root.rglob("*.png"))
    for encoding, words in (("utf-16", "lvshape, a circle \u2014 red"), ("cp1252", "lvshape, caf\xe9 au lait")):
        original = words.encode(encoding)
        image.with_suffix(".txt").write_bytes(original)
        relpath = image.relative_to(root).as_posix()
        assert data_panel.read_caption(root, relpath) == words == read_caption_text(image.with_suffix(".txt"))[0]
        backup = tmp_path / f"backup-{encoding}"
        data_panel.save_caption(root, relpath, "lvshape, edited", backup)
        assert next(backup.rglob("*.txt")).read_bytes() == original


def test_a_caption_whose_name_differs_from_its_images_in_case_alone_is_read_as_windows_reads_it(tmp_path):
    """Cat05.PNG with cat05.txt, IMG_1.jpg with img_1.TXT, photo_01.jpg with Photo_01.txt, pic06.png with
    pic06.tXt: paired on Windows, where the dataset was made; on Linux each trained on its folder's name (the last
    two unsaid, or said to be without an image)."""
    import pytest
    from conftest import run_config
    from PIL import Image

    from lowvram.data.check import scan
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    folder = tmp_path / "data" / "5_dog"
    folder.mkdir(parents=True)
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "ガギグ.txt")  # (a zip made on a Mac: alike on screen, apart to Linux)
    for i, name in enumerate(("Cat05.PNG", "IMG_1.jpg", "plain.png", "lonely.png", "photo_01.jpg", "pic06.png",
                              "ガギグ.png")):
        Image.new("RGB", (64, 64), (30 * i, 20, 20)).save(folder / name, format="JPEG" if "jpg" in name else "PNG")
    for name, text in (("cat05.txt", "a cat"), ("img_1.TXT", "an img"), ("plain.txt", "plain"), ("renamed.txt", "x"),
                       ("Photo_01.txt", "a photo"), ("pic06.tXt", "a pic"), (decomposed, "kana")):
        (folder / name).write_text(text)
    if (folder / "CAT05.TXT").exists():
        pytest.skip("this file system ignores case, as Windows does")
    run = resolve_run(run_config(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")), NO_GPU)
    report = scan(run, tmp_path / "data", None, None)
    assert {Path(r.relpath).name: r.caption for r in report.usable} == {
        "Cat05.PNG": "a cat", "IMG_1.jpg": "an img", "plain.png": "plain", "lonely.png": "dog",
        "photo_01.jpg": "a photo", "pic06.png": "a pic", "ガギグ.png": "kana"}
    notes = {Path(r.relpath).name: r.notes for r in report.usable}
    assert ("caption cat05.txt read: its name differs from the image's in letter case alone, which Windows ignores "
            "and Linux does not") in notes["Cat05.PNG"]
    assert not any("letter case" in note for note in notes["plain.png"])
    assert (f"caption {decomposed} read: its name and the image's are in different Unicode forms (one decomposed, as "
            "a zip made on a Mac writes names), alike on screen, which Linux keeps apart") in notes["ガギグ.png"]
    said = " ".join(report.folder_notes)
    assert "renamed.txt" in said and not any(name in said for name in ("cat05.txt", "img_1.TXT", "Photo_01.txt",
                                                                        decomposed))



def test_names_holding_a_windows_zips_folders_are_said_with_the_fix(tmp_path):
    """A zip PowerShell made, unpacked by Python's zipfile: img\\10_cat\\a.png is one file of that name. It trained
    as an image of the top folder, its repeats and label lost, unsaid."""
    import os
    import zipfile

    import pytest
    from conftest import run_config
    from PIL import Image

    from lowvram.data.check import scan
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    if os.sep != "/":
        pytest.skip("a \\ is a folder's there")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "a.png")
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        info = zipfile.ZipInfo("img\\10_cat\\a.png")  # as Compress-Archive wrote its entries
        archive.writestr(info, (tmp_path / "a.png").read_bytes())
    zipfile.ZipFile(tmp_path / "data.zip").extractall(tmp_path / "data")
    run = resolve_run(run_config(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")), NO_GPU)
    report = scan(run, tmp_path / "data", None, None)
    assert ("1 name(s) in ./ hold a \\ (img\\10_cat\\a.png): a zip made on Windows, unpacked with its folders as "
            "parts of the names; unpack it with `7z x` (or `unzip`), which makes the folders") in report.folder_notes


def test_captions_with_two_extensions_and_a_pasted_line_continuation_are_said_as_windows_habits(tmp_path, capsys):
    """cat.txt.txt (named in an Explorer that hides known extensions): 'an image renamed?' where some paired, and
    nothing at all where none did; a `^` copied from a .bat: 'unexpected argument'."""
    from conftest import run_config
    from PIL import Image

    from lowvram.cli import main
    from lowvram.data.check import scan
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    folder = tmp_path / "data" / "5_dog"
    folder.mkdir(parents=True)
    for i, name in enumerate(("cat.png", "dog.png")):
        Image.new("RGB", (64, 64), (90 * i, 20, 20)).save(folder / name)
    (folder / "cat.txt.txt").write_text("a cat")
    (folder / "dog.png.txt").write_text("a dog")
    run = resolve_run(run_config(data=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")), NO_GPU)
    report = scan(run, tmp_path / "data", None, None)
    assert any(note.startswith("2 caption file(s) in 5_dog/ have two extensions, read by none: cat.txt.txt, "
                               "dog.png.txt (a downloader's names, or ones made where Windows hides extensions); "
                               "rename each as its image, cat.txt") for note in report.folder_notes)
    assert not any("an image renamed" in note for note in report.folder_notes)
    # a downloader's sidecars (gallery-dl's dog.png.txt), a folder of them in a name a shell reads otherwise, their
    # images of several kinds: named so, with one command for all (it renamed the first's kind alone)
    odd = tmp_path / "data" / "5_it's $HOME"
    folder.rename(odd)
    (odd / "cat.txt.txt").rename(odd / "cat.png.txt")
    Image.new("RGB", (64, 64)).save(odd / "owl.jpg")
    (odd / "owl.jpg.caption").write_text("an owl")
    report = scan(run, tmp_path / "data", None, None)
    note = next(note for note in report.folder_notes if "have two extensions" in note)
    assert "(a downloader's names, or ones made where Windows hides extensions); rename each as its image, " \
           "cat.txt, those of an image's name all at once: (cd " in note
    if os.name != "nt":  # (the command given runs, in a shell of its own folder: no command is given on Windows)
        subprocess.run(["bash", "-c", note.split("all at once: ")[1] + " && pwd"], check=True, cwd=tmp_path,
                       stdout=subprocess.PIPE)
        assert sorted(path.name for path in odd.iterdir()) == ["cat.png", "cat.txt", "dog.png", "dog.txt",
                                                               "owl.caption", "owl.jpg"]
        (odd / "cat.txt").rename(odd / "cat.txt.txt")  # Explorer's alone: renamed by hand
        assert f"1 caption file(s) in {odd.name}/ have two extensions, read by none: cat.txt.txt (named where Windows " \
               "hides the extensions it knows); rename each as its image, cat.txt" in scan(
            run, tmp_path / "data", None, None).folder_notes
    assert main(["train", "--model", "tiny", "^"]) == 2
    assert ("unexpected argument '^': ^ ends a line of a command in Windows' cmd; here a line goes on after \\ (or "
            "write the command on one line)") in capsys.readouterr().err
    # a command copied from a page or a document, its -- joined into a dash and its quotes curled
    dash, quote = "\u2014", "\u201d"
    for argv, says in (([f"{dash}model", "tiny"], (f"'{dash}model': {dash} is a typographic dash, not two hyphens: "
                                                  "write --model")),
                       (["--data", "\u201cmy", f"data{quote}"], (f"'data{quote}': {quote} is a typographic quote, "
                                                              "which the shell keeps as letters: type them again"))):
        assert main(["train", *argv]) == 2
        assert f"unexpected argument {says}" in capsys.readouterr().err
    # (check-data took —model as its dataset, then found tiny unexpected; an empty word before it hid it)
    assert main(["check-data", "", f"{dash}model", "tiny", "sample"]) == 2
    assert f"{dash} is a typographic dash, not two hyphens: write --model" in capsys.readouterr().err
    # C:\\models\\sd15.safetensors unquoted in bash: C:modelssd15.safetensors
    assert main(["train", "--model", "C:modelssd15.safetensors", "--data", "sample"]) == 2
    assert ("file not found: C:modelssd15.safetensors; that looks like a Windows path whose backslashes the shell took "
            "out") in capsys.readouterr().err
