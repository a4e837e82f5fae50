"""--copy-to: the final LoRA written into a LoRA folder (ComfyUI's models/loras, AUTOMATIC1111's models/Lora) or
file when the run ends, with the card files AUTOMATIC1111 shows beside it: `<name>.json` (its base model and
trigger words, which its LoRA card adds to the prompt) and `<name>.preview.png` (the first final sample). A card
file already there is the user's: never written over, but for its base model, which follows the LoRA."""

from __future__ import annotations

import contextlib
import filecmp
import json
import shutil
from pathlib import Path

from PIL import Image

from lowvram.errors import LowvramError
from lowvram.files import atomic_write, write_text
from lowvram.lora_header import read_header
from lowvram.lora_metadata import addnet_hash, trigger_words
from lowvram.run_files import copy_destination, lora_list_folder
from lowvram.train.outdir import copy_problem, move_to_archive

# kohya's ss_base_model_version -> AUTOMATIC1111's "sd version" (its SdVersion names)
SD_VERSIONS = {"sd_v1": "SD1", "sd_v2": "SD2", "sdxl_base_v1-0": "SDXL"}


def copy_final(config, lora: Path, console=None, since: float = 0.0) -> Path | None:
    """The final LoRA written where --copy-to says (atomically), with its AUTOMATIC1111 card: over this run's
    earlier copy (`outdir.copy_problem` found it the run's), or after moving another file there to the run's
    archive/ (--overwrite); its path, None without --copy-to, or where the copy failed (a full disk, a file
    another program holds open): said on `console`, the run's own LoRA being what matters."""
    if not config.output.copy_to or not lora.is_file():
        return None
    copy = copy_destination(config.output.copy_to, config.output_name)
    if copy.is_file() and copy.stat().st_mtime > since and copy_problem(config):  # another run's, copied there
        # since this one started at `since` (two runs at once): kept (one there before was this run's: checked then)
        if console is not None:
            console.print(f"[yellow]warning: not copied to {copy}[/]: a LoRA not this run's was written there since "
                          f"the run started (another run's, of the same name); {lora} is saved: copy it there under "
                          "another name yourself", soft_wrap=True)
        return None
    try:
        if not (copy.is_file() and filecmp.cmp(copy, lora, shallow=False)):  # (a finished run resumed: copied)
            if copy.is_file() and config.output.overwrite:  # (its card files with it, as they tell of that LoRA;
                # the user's own stay for this one: a card edited in AUTOMATIC1111, a preview chosen there)
                kept = [path for path in card_files(copy) if path.exists() and _users(copy, path)]
                held = [path for path in (copy, *card_files(copy)) if path.exists() and path not in kept]
                moved = move_to_archive(config.output_dir, held)
                for path in kept:
                    shutil.copy2(path, moved / path.name)
                if console is not None:
                    console.print(f"moved the earlier {copy.name} to {moved}" + (
                        f"; kept your {' and '.join(path.name for path in kept)} for this one (a copy is there too)"
                        if kept else ""), soft_wrap=True)
            elif copy.is_file():  # this run's earlier copy (a finished run continued): a sample of it shows it
                _drop_preview_of(copy)
            atomic_write(copy, lambda tmp: shutil.copyfile(lora, tmp), lora.stat().st_size, "the LoRA's copy")
        card, ours = card_files(copy)[0], a1111_card(read_header(copy)[0])
        if not card.exists():
            _write_card(card, ours)
        else:  # the user's, kept: AUTOMATIC1111's filter by base model follows the new LoRA (an SD1.5 card hid
            _follow_base(card, ours)  # an SDXL LoRA)
    except (LowvramError, OSError) as exc:
        if console is not None:
            console.print(f"[yellow]warning: could not copy the LoRA to {copy}[/] ({exc}); {lora} is saved: copy it "
                          "there yourself", soft_wrap=True)
        return None
    return copy


def card_in_place(config, lora: Path) -> Path | None:
    """A run trained into a LoRA list folder itself (AUTOMATIC1111's models/Lora): its LoRA's card beside it, as
    --copy-to writes one (the list showed it without a card or a preview); the LoRA, for its preview, or None."""
    if config.output.copy_to or not card_beside(lora):
        return None
    return lora


@contextlib.contextmanager
def carded(lora: Path):
    """`lora` written within the block (`resize`'s, `merge`'s, `extract`'s output), with its AUTOMATIC1111 card
    where it goes into a LoRA list folder (`card_beside`). Card files lowvram wrote for the file it replaces go
    (their trigger words and preview were the earlier LoRA's); the user's stay."""
    stale = [path for path in card_files(lora) if lora.is_file() and path.exists() and not _users(lora, path)]
    yield
    for path in stale if lora.is_file() else []:
        with contextlib.suppress(OSError):
            path.unlink()
    card_beside(lora)


def card_beside(lora: Path) -> Path | None:
    """`lora`'s AUTOMATIC1111 card where it is in a LoRA list folder (models/Lora), else None. A card there already
    (the user's) is kept, its base model following the LoRA's."""
    if not lora.is_file() or lora_list_folder(lora.parent) is None:
        return None
    card = card_files(lora)[0]
    with contextlib.suppress(OSError, LowvramError):
        ours = a1111_card(read_header(lora)[0])
        if card.exists():
            _follow_base(card, ours)
        else:
            _write_card(card, ours)
    return card


def _follow_base(card: Path, ours: dict[str, str]) -> None:
    """The user's card file with the LoRA's base model ("sd version"), where it names another."""
    try:
        kept = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(kept, dict) and kept.get("sd version") not in (None, ours["sd version"]):
        _write_card(card, kept | {"sd version": ours["sd version"]})


def _write_card(path: Path, card: dict) -> None:
    """A card file as AUTOMATIC1111's editor writes it: indented JSON, its text as typed."""
    write_text(path, json.dumps(card, indent=4, ensure_ascii=False) + "\n")


def _drop_preview_of(copy: Path) -> None:
    """Remove the copy's preview where it is a sample of that very file: the LoRA about to replace it draws its
    own. A preview of anything else is the user's and stays."""
    preview = card_files(copy)[1]
    if preview.exists() and not _users(copy, preview):
        preview.unlink()


def _users(copy: Path, card_file: Path) -> bool:
    """Whether a card file of `copy` is the user's, not as lowvram wrote it for that file: a card holding a setting
    the LoRA's own card has not, or another value of it (AUTOMATIC1111's editor saved the user's activation text,
    preferred weight, notes; the empty ones it saves, and a card of an older lowvram with fewer, are not), a preview
    that is no sample of it (its infotext names the file's hash)."""
    try:
        if card_file.suffix == ".json":
            card, ours = json.loads(card_file.read_text(encoding="utf-8")), a1111_card(read_header(copy)[0])
            return not isinstance(card, dict) or any(value not in ("", 0, None) and ours.get(key) != value
                                                     for key, value in card.items())
        with Image.open(card_file) as image:
            return f": {addnet_hash(copy)[:12]}" not in image.info.get("parameters", "")
    except (OSError, ValueError, LowvramError):  # (not a file lowvram wrote)
        return True


def a1111_card(metadata: dict[str, str]) -> dict[str, str]:
    """AUTOMATIC1111's user metadata of a LoRA (what its card's editor saves as <name>.json), from the LoRA's own:
    its base model (by which the LoRA list filters), its trigger words as activation text and its description (a
    LoRA without metadata, --no-metadata's, tells neither)."""
    card = {"sd version": SD_VERSIONS.get(metadata.get("ss_base_model_version", ""), "Unknown")}
    if trigger_words(metadata):
        card["activation text"] = trigger_words(metadata)
    if metadata.get("modelspec.description"):
        card["description"] = metadata["modelspec.description"]
    return card


def card_files(copy: Path) -> tuple[Path, Path]:
    """AUTOMATIC1111's card files of a LoRA: its user metadata and its preview."""
    return copy.with_suffix(".json"), copy.with_suffix(".preview.png")


def add_preview(copy: Path | None, samples: list[Path]) -> Path | None:
    """The first final sample as the copy's `<name>.preview.png` (AUTOMATIC1111's and ComfyUI's LoRA managers'
    thumbnail), unless one is there."""
    if copy is None or not samples:
        return None
    preview = card_files(copy)[1]
    if preview.exists():
        return None
    return atomic_write(preview, lambda tmp: shutil.copyfile(samples[0], tmp), samples[0].stat().st_size,
                        "the LoRA's preview")
