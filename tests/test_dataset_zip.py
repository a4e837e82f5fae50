"""A dataset uploaded as one zip, as the Colab notebook unpacks it: once, again where it is uploaded anew, with its
folders where Windows PowerShell wrote \\ between them, and never over a folder it did not unpack."""

import os
import shutil
import zipfile

from PIL import Image

from lowvram.cli import main
from lowvram.dataset_zip import unpack_dataset_zip, zip_folder


def zipped(path, files: dict[str, str]):
    """A zip of PNG images (by entry name, each of a colour) and captions (.txt entries: their text)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            if name.endswith(".txt"):
                archive.writestr(name, content)
            else:
                image = path.parent / "image.png"
                Image.new("RGB", (64, 64), content).save(image)
                archive.write(image, name)
    return path


def test_a_zip_is_unpacked_once_and_again_where_it_is_uploaded_anew(tmp_path):
    archive = zipped(tmp_path / "pets.zip", {"pets/5_cat/a.png": "red", "pets/5_cat/a.txt": "a cat"})
    folder, said = unpack_dataset_zip(archive)
    assert folder == tmp_path / "pets" / "pets" and said == f"{archive} unpacked into {tmp_path / 'pets'}"
    assert (folder / "5_cat" / "a.txt").read_text() == "a cat"
    assert unpack_dataset_zip(archive) == (folder, f"{archive} was unpacked into {tmp_path / 'pets'} already")
    # the same bytes at another time (uploaded again, a share's clock): unpacked already (each time a new copy was
    # unpacked, the earlier kept beside it)
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert unpack_dataset_zip(archive) == (folder, f"{archive} was unpacked into {tmp_path / 'pets'} already")
    assert not list(tmp_path.glob("pets.before-*"))
    stamp = tmp_path / ".pets.unpacked"
    stamp.write_text("")  # (cut short by a disconnect: a ValueError)
    assert unpack_dataset_zip(archive)[1] == f"{archive} changed since it was unpacked: unpacked anew into " \
        f"{tmp_path / 'pets'} (the folder of the earlier one is kept as {next(tmp_path.glob('pets.before-*'))}; " \
        "delete it once nothing in it is needed)"
    for kept in tmp_path.glob("pets.before-*"):
        shutil.rmtree(kept)
    # uploaded again with one more image: it trained the old images, saying "unpacked into"
    zipped(archive, {"pets/5_cat/a.png": "red", "pets/5_cat/a.txt": "a cat", "pets/5_cat/b.png": "blue"})
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    (folder / "5_cat" / "a.txt").write_text("a cat, edited")  # (or written by lowvram caption)
    said = unpack_dataset_zip(archive)[1]
    kept = next(tmp_path.glob("pets.before-*"))  # the earlier one, with what was written in it: kept
    assert said == (f"{archive} changed since it was unpacked: unpacked anew into {tmp_path / 'pets'} (the folder "
                    f"of the earlier one is kept as {kept}; delete it once nothing in it is needed)")
    assert sorted(p.name for p in (folder / "5_cat").iterdir()) == ["a.png", "a.txt", "b.png"]
    assert (kept / "pets" / "5_cat" / "a.txt").read_text() == "a cat, edited"
    assert [p.name for p in tmp_path.iterdir() if "unpacking" in p.name] == []


def test_a_zip_of_windows_powershell_keeps_its_folders_and_their_repeats(tmp_path, capsys):
    """PowerShell 5's Compress-Archive writes \\ between folders: zipfile unpacked flat files named
    `mypics\\5_cat\\a.png`, which trained once each under the zip's name, not 5 times as cat."""
    archive = zipped(tmp_path / "mypics.zip", {"mypics\\5_cat\\a.png": "red", "mypics\\5_cat\\a.txt": "a cat"})
    assert zip_folder(archive) == "mypics"
    folder, _ = unpack_dataset_zip(archive)
    assert (folder / "5_cat" / "a.png").is_file()
    assert main(["check-data", str(folder), "--model", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "5 samples per epoch" in " ".join(capsys.readouterr().out.split())
    # given as --data, the way it says to unpack it makes the folders (python -m zipfile unpacked flat files)
    assert main(["check-data", str(archive), "--model", "tiny"]) == 2
    assert (f"unpack it first with unzip (or 7-Zip), which makes the folders Windows PowerShell wrote as \\ in its "
            f"names: unzip {archive} -d {tmp_path / 'mypics'}") in " ".join(capsys.readouterr().err.split())


def test_a_zip_of_a_japanese_windows_keeps_its_names(tmp_path, capsys):
    """Explorer's "Compressed folder" on a Japanese Windows writes names in cp932, unflagged: zipfile read them as
    cp437, and the folder's label (so its images' captions) trained as âLâââë. Made here as Explorer writes them:
    ASCII stand-ins of the same length, replaced by the cp932 bytes."""
    import sys

    names = {"\u30ad\u30e3\u30e9": b"A" * 6, "\u5b66\u7fd2": b"B" * 4}  # キャラ, 学習
    archive = zipped(tmp_path / "data.zip", {"AAAAAA/10_ohwx BBBB/a.png": "red"})
    raw = archive.read_bytes()
    for name, stand_in in names.items():
        raw = raw.replace(stand_in, name.encode("cp932"))
    archive.write_bytes(raw)
    folder, _ = unpack_dataset_zip(archive)
    assert folder == tmp_path / "data" / "\u30ad\u30e3\u30e9"
    assert (folder / "10_ohwx \u5b66\u7fd2" / "a.png").is_file()
    assert main(["check-data", str(archive), "--model", "tiny"]) == 2
    unpack = ("python3 -m zipfile --metadata-encoding cp932 -e" if sys.version_info >= (3, 11) else "unzip -O cp932")
    said = " ".join(capsys.readouterr().err.split())
    from lowvram.dataset_zip import member_name, names_encoding

    # a name zipfile took from Info-ZIP's Unicode path field (Python 3.12+) is kept, whatever the legacy name's
    # bytes are (Info-ZIP writes ? for a letter its code page lacks); its cp437 bytes were asked for, and raised
    taken = zipfile.ZipInfo("\u5b66\u7fd2.png")
    taken.orig_filename = "\u5b66?".encode("cp932").decode("cp437") + ".png"
    assert member_name(taken, "cp932") == "\u5b66\u7fd2.png"
    archive = zipped(tmp_path / "h.zip", {"AAAAAAAA.png": "red"})  # (its stand-in: as many bytes as the name)
    raw = "\uff11\uff10_\uff77\uff6c\uff97".encode("cp932")
    archive.write_bytes(archive.read_bytes().replace(b"A" * len(raw), raw))
    with zipfile.ZipFile(archive) as opened:
        assert names_encoding(opened) == "cp932"
    western = zipped(tmp_path / "w.zip", {"AAAAA.png": "red"})  # (cp850's naive: read as cp932, na\u4e45e)
    western.write_bytes(western.read_bytes().replace(b"AAAAA", b"na\x8bve"))
    assert zip_folder(western) is None and unpack_dataset_zip(western)[0] == tmp_path / "w"
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["na\u00efve.png"]
    top = tmp_path / "\u30ad\u30e3\u30e9"  # (one folder in the zip: unpacked beside it)
    assert f"unpack it first: {unpack}" in said and f"--data '{top}'" in said, said


def test_a_broken_zip_is_one_line_and_leaves_nothing_half_unpacked(tmp_path):
    import pytest

    from lowvram.errors import LowvramError

    archive = tmp_path / "data.zip"
    archive.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(LowvramError, match=f"DATA: {archive} is not a readable zip .*; upload it again"):
        unpack_dataset_zip(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zip"]


def test_a_folder_the_zip_did_not_unpack_is_kept_aside_or_taken_as_the_earlier_unpacking(tmp_path):
    archive = zipped(tmp_path / "data.zip", {"5_cat/a.png": "red"})
    own = tmp_path / "data"
    own.mkdir()
    (own / "mine.png").write_bytes(b"the user's own")
    old = own.stat().st_mtime - 60  # unpacked before the zip was uploaded: not its unpacking
    os.utime(own, (old, old))
    folder, said = unpack_dataset_zip(archive)
    kept = next(tmp_path.glob("data.before-*"))
    assert said == f"{archive} unpacked anew into {own} (the folder there before is kept as {kept})"
    assert (kept / "mine.png").read_bytes() == b"the user's own" and (folder / "a.png").is_file()  # (data/5_cat)
    # an earlier notebook's unpacking (no record of it, made after the upload): taken as this upload's
    (tmp_path / ".data.unpacked").unlink()
    later = archive.stat().st_mtime + 60
    os.utime(own, (later, later))
    assert unpack_dataset_zip(archive)[1] == f"{archive} was unpacked into {own} already"
    assert len(list(tmp_path.glob("data.before-*"))) == 1
