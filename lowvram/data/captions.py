"""A caption file as the dataset scan reads it: the `.txt` or `.caption` beside an image (the extension asked for
first, in any case), its non-empty lines, in UTF-8, in UTF-16 (Windows' "Unicode"), or else in Windows' code page,
which Notepad and older taggers saved in.
What was found is said in notes, never raised: a caption problem never stops a scan."""

from __future__ import annotations

import codecs
import functools
import math
import os
import random
import re
import unicodedata
from pathlib import Path

from lowvram.config import CAPTION_SUFFIXES
from lowvram.prompts import UNSPACED

WILDCARD = re.compile(r"\{([^{}]+)\}")  # kohya's {a|b|c}: one of a, b, c ({a}: a); {{ and }} are braces
BRACES = ("{{", "\x00"), ("}}", "\x01")  # kohya's escaped braces, kept out of the choices' way
MAX_WILDCARD_CAPTIONS = 64  # captions one caption line's {a|b} choices may make; past it, a fixed choice of them


MAX_CAPTION_BYTES = 2**20  # the text encoders read at most 225 tokens: a caption file of a MiB is something else

NO_CAPTION_FILE = "no caption file"  # the note on an image that has none (its caption the template's)


def read_caption_file(image: Path, extension: str) -> tuple[str | None, list[str], Path | None]:
    """(the caption: its non-empty lines, stripped, one per line; or None where there is no file, it is empty or
    unreadable; notes; the file when it was not UTF-8)."""
    found = caption_files(image, extension)
    notes: list[str] = []
    if _blank_before_tags(found):
        notes.append(f"both {found[0].suffix} and {found[1].suffix}: used {found[1].suffix}, as the "
                     f"{found[0].suffix} is empty")
        found = found[1:]
    elif len(found) > 1:
        notes.append(f"both {found[0].suffix} and {found[1].suffix}: used {found[0].suffix}")
    elif found and found[0].suffix.lower() != extension.lower():  # (kohya reads one extension alone)
        notes.append(f"caption read from its {found[0].suffix} file, as it has no {extension} (kohya and OneTrainer "
                     "read one extension alone: kohya's caption_extension, .caption unless set; OneTrainer's .txt)")
    if not found:
        others = [suffix for suffix in CAPTION_SUFFIXES if suffix != extension and caption_file(image, suffix)]
        unread = f" (its {others[0]} is not read with --caption-extension {extension})" if others else ""
        if not others and (tags := _json_beside(image)):
            unread = f" ({tags} is not read: captions are plain text, as {image.stem}{extension})"
        return None, notes + [f"{NO_CAPTION_FILE}{unread}: template used"], None
    if found[0].stem.lower() != image.stem.lower():
        notes.append(f"caption {found[0].name} read: its name and the image's are in different Unicode forms (one "
                     "decomposed, as a zip made on a Mac writes names), alike on screen, which Linux keeps apart")
    elif found[0].stem != image.stem:
        notes.append(f"caption {found[0].name} read: its name differs from the image's in letter case alone, which "
                     "Windows ignores and Linux does not")
    non_utf8 = None
    try:
        with open(found[0], "rb") as fh:
            raw = fh.read(MAX_CAPTION_BYTES + 1)
    except OSError as exc:
        return None, notes + [f"caption unreadable ({exc.strerror or exc}): template used"], None
    if len(raw) > MAX_CAPTION_BYTES:  # a log or a dump saved as .txt: read whole, it would fill the RAM
        return None, notes + [f"caption file over {MAX_CAPTION_BYTES // 2**20} MiB: not a caption, template used"], None
    decoded, read_as = decode_caption(raw)
    if decoded is None:
        return None, notes + [f"caption unreadable: {found[0].name} holds NUL bytes, not text: template used"], None
    if decoded.lstrip().startswith("{\\rtf"):  # (TextEdit's default: its code trained as the caption)
        return None, notes + [(f"caption {found[0].name} is rich text (RTF), not plain text (save it as plain text: "
                              "TextEdit's Format > Make Plain Text): template used")], None
    if read_as == "utf-16 without a byte-order mark":
        notes.append(f"caption is UTF-16 without a byte-order mark: read as such (save {found[0].name} as UTF-8 to "
                     "be sure)")
    elif read_as in LEGACY_NAMES:
        non_utf8 = found[0]
        # as read, so that a file in another code page shows its garbling
        shown = "".join(char if char.isprintable() else "?" for char in " ".join(decoded.split()))
        shown = shown if len(shown) <= 40 else shown[:39] + "…"
        notes.append(f"caption not UTF-8: read as {read_as}, '{shown}' (save {found[0].name} as UTF-8 to be sure)")
    # (a line of nothing but separators, a tagger's output emptied by hand: ", ," trained as the caption)
    text = "\n".join(line.strip() for line in decoded.splitlines() if line.replace(",", " ").strip()) or None
    if text is None:
        notes.append("empty caption file: template used" if not decoded.strip() else
                     f"caption {found[0].name} holds nothing but commas: template used")
    return text, notes, non_utf8


def trained_caption_file(image: Path, extension: str) -> Path | None:
    """The caption file training reads for the image (`read_caption_file`'s), or None."""
    found = caption_files(image, extension)
    return (found[1:] if _blank_before_tags(found) else found or [None])[0]


def _blank_before_tags(found: list[Path]) -> bool:
    """Whether the caption file read first is empty and the next is not (a tagger's tags beside an empty .txt):
    the next is read."""
    return len(found) > 1 and _blank(found[0]) and not _blank(found[1])


def _blank(path: Path) -> bool:
    """Whether a caption file holds no text (nothing but spaces, or a byte-order mark); one that cannot be read is
    not said to be blank."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(4096)
    except OSError:
        return False
    text = decode_caption(raw)[0] if len(raw) < 4096 else None
    return text is not None and not text.strip()


def decode_caption(raw: bytes) -> tuple[str | None, str]:
    """A caption file's bytes as text, however Windows tools saved it, and how they were read: "utf-8" (a
    byte-order mark or none), "utf-16" (Notepad's "Unicode", PowerShell 5's >), "utf-16 without a byte-order mark",
    or a legacy code page (Notepad's ANSI, older taggers: LEGACY_NAMES). None for bytes that are no text."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace"), "utf-16"
    if b"\0" in raw:
        return _decode_utf16(raw), "utf-16 without a byte-order mark"
    try:
        return raw.decode("utf-8-sig").lstrip("\ufeff"), "utf-8"  # (two tools' marks: each added one)
    except UnicodeDecodeError:
        return _decode_legacy(raw)


def read_caption_text(path: Path) -> tuple[str, str]:
    """The text of a caption file as training reads it (any of `decode_caption`'s encodings), and how it was read;
    ("", "") for none."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CAPTION_BYTES + 1)
    except OSError:
        return "", ""
    text, read_as = decode_caption(raw) if len(raw) <= MAX_CAPTION_BYTES else (None, "")
    return text or "", read_as


def caption_files(image: Path, extension: str) -> list[Path]:
    """The image's caption files in the order training reads them: `extension` (--caption-extension) first, then
    the other of .txt and .caption where it is one of them."""
    order = [extension] + [s for s in CAPTION_SUFFIXES if s != extension and extension in CAPTION_SUFFIXES]
    return [path for path in (caption_file(image, suffix) for suffix in order) if path]


def caption_file(image: Path, suffix: str) -> Path | None:
    """The image's caption file of `suffix`, its name in whichever case it is written (.txt, .TXT, .tXt; Cat05.PNG's
    cat05.txt, photo_01.jpg's Photo_01.txt): Windows keeps them apart from nothing, Linux from each other. The name
    as the image's first, where a Linux folder holds two."""
    exact = image.with_name(image.stem + suffix)
    if exact.is_file():
        return exact
    try:
        listing = _names_by_case(str(image.parent), image.parent.stat().st_mtime_ns)
    except OSError:
        return None
    return next((found for name in listing.get(name_key(image.stem + suffix), ())
                 if (found := image.with_name(name)).is_file()), None)


def name_key(name: str) -> str:
    """A file name as Windows and macOS match it: in any letter case, and in either Unicode form (a zip made on a Mac
    names ガ or é decomposed, as カ and a mark, NFD: alike on screen, apart to Linux)."""
    return unicodedata.normalize("NFC", name).lower()


def _json_beside(image: Path) -> str | None:
    """The name of a JSON file kept beside an image as its tags or metadata (a tagger's `pic.json`, gallery-dl's
    `pic.jpg.json`), or None."""
    try:
        listing = _names_by_case(str(image.parent), image.parent.stat().st_mtime_ns)
    except OSError:
        return None
    keys = (name_key(f"{image.stem}.json"), name_key(f"{image.name}.json"))
    return next((listing[key][0] for key in keys if key in listing), None)


@functools.lru_cache(maxsize=32)
def _names_by_case(folder: str, _changed: int) -> dict[str, tuple[str, ...]]:
    """A folder's names by their `name_key`, read once while it is unchanged (a caption per image would read a
    folder of thousands thousands of times)."""
    names: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        names.setdefault(name_key(name), []).append(name)
    return {key: tuple(value) for key, value in names.items()}


def _decode_utf16(raw: bytes) -> str | None:
    """Text saved as UTF-16 without a byte-order mark (its NUL bytes fall on the odd places in little-endian, the even
    in big-endian); None for bytes that are no such text."""
    odd, even = raw[1::2].count(0), raw[0::2].count(0)
    if len(raw) % 2 or max(odd, even) < 0.4 * len(raw) / 2:  # Latin text in UTF-16 has a NUL in most places of one
        return None
    try:
        decoded = raw.decode("utf-16-le" if odd >= even else "utf-16-be")
    except UnicodeDecodeError:
        return None
    return None if "\0" in decoded else decoded


# Windows' ANSI code pages of East Asia (Notepad's "ANSI" on a Japanese, Chinese or Taiwanese Windows), tried where
# cp1252 reads a caption as garbling
EAST_ASIAN = (("cp932", "Shift_JIS"), ("gb18030", "GBK"), ("big5", "Big5"), ("euc_jp", "EUC-JP"))
# a half-width katakana with none beside it: a Western text's accented capital or sign (Ã, ½), not a word
LONE_HALFWIDTH = re.compile("(?<![\uff61-\uff9f])[\uff61-\uff9f](?![\uff61-\uff9f])")
LEGACY_NAMES = ("cp1252", "cp1251", *(name for _, name in EAST_ASIAN))
# Russian's, Ukrainian's and Belarusian's letters and the signs their texts hold (where Shift_JIS's kana read as
# cp1251's other signs): a cp1251 reading of these alone, with a word of three, is one
CYRILLIC = re.compile("[\u0401\u0404\u0406\u0407\u040e\u0410-\u044f\u0451\u0454\u0456\u0457\u045e"
                      "\u0490\u0491\u00ab\u00bb\u2013\u2014\u2116\u00a0]")
CYRILLIC_WORD = re.compile("[\u0410-\u044f\u0451]{3}")
# what a Western caption's non-ASCII characters are besides letters: a sign cp1252 reads elsewhere is a lead or
# trail byte of an East Asian character (Big5's and GBK's trail bytes are often ASCII, which breaks up the runs)
WESTERN_MARKS = "“”‘’‚„–—…«»°·¿¡©®™€£¥§¶×÷±"


def _decode_legacy(raw: bytes) -> tuple[str, str]:
    """A caption in a legacy code page and its name: Windows' ANSI code page, cp1252 (a superset of latin-1's
    printable characters, its five undefined bytes taken as latin-1, so nothing becomes a replacement character),
    or an East Asian one where cp1252 reads signs amid words or runs of accented letters (a double-byte character
    is two bytes over 0x7f; a Western text has them one by one, as letters) and that code page reads East Asian
    characters only. Several may: kana are Japanese (Big5's and GBK's bytes never read as Shift_JIS's kana); a
    reading in GB2312's common characters is Chinese (Japanese kanji's Shift_JIS bytes read as GBK's rare ones), one
    in JIS X 0208's Japanese, one of EUC-JP's with kana Japanese (Big5's bytes read so only here and there), else
    Traditional Chinese (Big5's characters read as half-width katakana in Shift_JIS)."""
    try:
        western = raw.decode("cp1252")
    except UnicodeDecodeError:  # single-byte encodings: byte by byte is exact
        western = "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in raw)
    signs = any(ord(char) > 0x7F and not unicodedata.category(char).startswith("L") and char not in WESTERN_MARKS
                for char in western)
    # two East Asian characters in a row are four bytes over 0x7f; no Western word has four accented letters in a
    # row (Portuguese "ção" has two, which GBK reads as one character)
    if not signs and not re.search(r"[^\x00-\x7f]{4}", western):
        return western, "cp1252"
    cyrillic = raw.decode("cp1251", errors="replace")  # (a Russian or Ukrainian Windows' ANSI: every byte a letter)
    if _reads_as_cyrillic(cyrillic):
        return cyrillic, "cp1251"
    readings = {}
    for codec, name in EAST_ASIAN:
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        chars = [char for char in text if ord(char) > 0x7F]
        # half-width katakana (ｶﾜｲｲ) beside kana, or in runs where neither a Big5 nor a GBK reading exists
        # (ﾛﾝｸﾞﾍｱｰ, 1girl: an odd run of bytes before an ASCII comma); else they may be a Chinese text's bytes (GBK's
        # 女孩們 reads as ﾅｮｺ｢ｃ; ｾｰﾗｰ服, which GBK reads too, stays GBK's as before), or a Western text's accented
        # letters and signs (½ más: a lone ｽ beside a kanji)
        halfwidth = codec == "cp932" and (_has_kana(text) or not _decodes(raw, "big5") and not _decodes(raw, "gbk")
                                          and not LONE_HALFWIDTH.search(text))
        if (any(map(_east_asian, chars)) or halfwidth and chars) and all(
                _east_asian(char) or _punctuation(char) or halfwidth and "\uff61" <= char <= "\uff9f" for char in chars):
            readings[name] = text
    for name, judged_by in (("Shift_JIS", _has_kana),
                            ("GBK", lambda text: _fits(text, "gb2312") and not _has_kana(text)),
                            ("Shift_JIS", lambda text: _fits(text, "shift_jis")),
                            ("EUC-JP", lambda text: sum(map(_is_kana, text)) >= 2),  # (Big5's 中 is EUC-JP's い)
                            ("Big5", bool), ("EUC-JP", _has_kana)):
        if name in readings and judged_by(readings[name]):
            return readings[name], name
    return next(((text, name) for name, text in readings.items()), (western, "cp1252"))


def _reads_as_cyrillic(text: str) -> bool:
    """Whether a cp1251 reading is Russian or Ukrainian text: its letters and signs alone, a word of three, mostly
    lower case and never a capital after a small letter in a word (GBK's 中文 reads as ЦРОД, 机器人 as »ъЖчИЛ)."""
    letters = [char for char in text if "\u0400" <= char <= "\u04ff"]
    return (bool(CYRILLIC_WORD.search(text)) and all(char.isascii() or CYRILLIC.fullmatch(char) for char in text)
            and sum(char.islower() for char in letters) >= 0.7 * len(letters)
            and not re.search("[\u0430-\u044f\u0451\u0454\u0456\u0457\u045e\u0491][\u0400-\u042f\u0490]", text))


def _has_kana(text: str) -> bool:
    return any(map(_is_kana, text))


def _is_kana(char: str) -> bool:
    return "\u3040" <= char <= "\u30ff"


def _decodes(raw: bytes, codec: str) -> bool:
    try:
        raw.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


def _fits(text: str, codec: str) -> bool:
    """Whether a code page of a smaller character set (GB2312's, JIS X 0208's) holds all of `text`."""
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _punctuation(char: str) -> bool:
    """Quotes, dashes, ellipses, arrows and symbols (“ ” … — ★ ♪ ※ × °) East Asian code pages carry too."""
    code = ord(char)
    return 0x2000 <= code <= 0x2BFF or char in "°±·×÷§¨´¶"


def _east_asian(char: str) -> bool:
    """Kana, ideographs, East Asian punctuation and full-width forms (not half-width katakana, which a Chinese
    text's bytes read as in Shift_JIS)."""
    code = ord(char)
    return (0x3000 <= code <= 0x30FF or 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF
            or 0xFF00 <= code <= 0xFF60 or 0xFFE0 <= code <= 0xFFEF)


def split_kept_tags(caption: str, separator: str, tag_separator: str = ",") -> tuple[str, tuple[int, int] | None]:
    """A caption written with kohya's keep_tokens_separator ("front tags ||| tags to vary ||| end tags") as plain
    tags (split at `tag_separator`, joined with ", " as kohya joins them; with another separator, by it, so that a
    tag holding a comma stays one when the tags are varied), and how many of them stay in place at the front and at
    the end; (the caption, None) where it has no separator."""
    if not separator or separator not in caption:
        return caption, None
    parts = [[tag.strip() for tag in part.split(tag_separator) if tag.strip()] for part in caption.split(separator, 2)]
    front, middle, end = parts[0], parts[1], parts[2] if len(parts) > 2 else []
    joint = ", " if tag_separator.strip() == "," else f"{tag_separator.strip()} "
    return joint.join(front + middle + end), (len(front), len(end))


def expand_wildcards(caption: str, limit: int) -> tuple[list[str], int]:
    """Every caption the {a|b|c} choices in `caption` make, in order (itself where it has none), and how many
    there are; past `limit`, that many of them, chosen by a seed of the caption (the same in every run)."""
    for escaped, placeholder in BRACES:
        caption = caption.replace(escaped, placeholder)
    parts = WILDCARD.split(caption)  # text, choices, text, choices, ..., text
    for escaped, placeholder in BRACES:
        parts = [part.replace(placeholder, escaped[0]) for part in parts]
    options = [part.split("|") if i % 2 else [part] for i, part in enumerate(parts)]
    count = math.prod(len(choices) for choices in options)
    chosen = range(count) if count <= limit else sorted(random.Random(caption).sample(range(count), limit))
    captions = []
    for index in chosen:  # the index's digits, one per choice, in mixed radix
        picked = []
        for choices in reversed(options):
            index, digit = divmod(index, len(choices))
            picked.append(choices[digit])
        captions.append("".join(reversed(picked)))
    return captions, count


def captions_of(text: str, lines_read: str, wildcards: bool, notes: list[str], separator: str = ",",
                tag_file: bool = True) -> tuple[list[str], tuple[float, ...]]:
    """The captions a caption text (its lines) makes, as --caption-lines (`lines_read`) reads them: its first line,
    each line, or the lines joined as tags by `separator`; with `wildcards`, each combination of their {a|b}
    choices. `notes` get a word on the lines left out or the captions made. Also each caption's chance of being
    drawn where they differ (empty where all are equal): as kohya draws a line, then its choices, a line of more
    combinations is drawn no more often than another. `tag_file`: the text is a caption file's, which may be a
    downloader's tags a line (a metadata file's list is captions)."""
    lines = text.split("\n")
    if len(lines) > 1 and lines_read == "join":
        lines = [(", " if separator == "," else f"{separator} ").join(lines)]
    elif len(lines) > 1 and lines_read == "first" and tag_file and _tag_a_line(lines, separator):
        notes.append(f"caption lines: the first of {len(lines)} is trained, and they look like tags, one a line (a "
                     "downloader's tag file): --caption-lines join trains them all as one caption")
        lines = lines[:1]
    elif len(lines) > 1 and lines_read == "first":  # (a paragraph Notepad wrapped: its second sentence lost, unsaid)
        whole = "; a paragraph over several lines trains whole written on one" * (len(lines[0].split()) >= 5 and all(
            len(line.split()) >= 5 or line.rstrip().endswith((".", "!", "?")) for line in lines))  # ("Warm light.")
        notes.append(f"caption lines: the first of {len(lines)} is trained (--caption-lines each draws among them"
                     f"{whole})")
        lines = lines[:1]
    elif len(lines) > 1:
        notes.append(f"caption lines: one of {len(lines)} drawn each time the image is trained")
    if not wildcards:
        return lines, ()
    expanded = [expand_wildcards(line, MAX_WILDCARD_CAPTIONS) for line in lines]
    made = sum(count for _, count in expanded)
    captions = [caption for made_here, _ in expanded for caption in made_here]
    if made > len(captions):
        notes.append(f"{{a|b}} choices: {made} captions, of which a fixed {len(captions)} are drawn among")
    elif made > len(lines):
        notes.append(f"{{a|b}} choices: one of {made} captions drawn each time the image is trained")
    if len({len(made_here) for made_here, _ in expanded}) == 1:
        return captions, ()
    return captions, tuple(1 / len(lines) / len(made_here) for made_here, _ in expanded for _ in made_here)


def _tag_a_line(lines: list[str], separator: str) -> bool:
    """Whether a caption file's lines are tags, one a line (gallery-dl's tag files): five or more, none holding the
    tag separator, {a|b} choices nor a sentence's words, half of them one word (booru tags: 1girl, long_hair); a tag
    line over a description, or short captions to draw among (ohwx woman smiling), are captions."""
    one_word = sum(len(line.split()) == 1 for line in lines)
    return len(lines) >= 5 and one_word * 2 >= len(lines) and all(
        separator not in line and "{" not in line and len(line.split()) <= 4 for line in lines)


def wrapped(prefix: str, line: str, suffix: str) -> str:
    """kohya's caption_prefix + " " + caption + " " + caption_suffix; a prefix that ends (a suffix that starts)
    with a space already takes none more."""
    before = prefix + ("" if not prefix or prefix[-1].isspace() else " ")
    after = ("" if not suffix or suffix[0].isspace() else " ") + suffix
    return f"{before}{line}{after}"


def has_word(caption: str, word: str) -> bool:
    """Whether the caption holds `word` as a word of its own ("sks" in "a sks dog", not in "tasks"), in any case
    and either Unicode form ('é' as one character, or as 'e' and its accent, as macOS tools may write it): the
    tokenizer reads them alike. Chinese and Japanese, written without spaces, hold a word wherever it stands
    ('猫娘' in '猫娘の女の子'), and a Latin name stands against them ('ohwx' in 'ohwxの女の子')."""
    caption, word = unicodedata.normalize("NFC", caption), unicodedata.normalize("NFC", word)
    if not word:
        return False
    # a word's letter that a space would part from the next word (not _, which a tagger writes for one: ohwx_char
    # holds ohwx as ohwx char does)
    spaced_letter = rf"[^\W_{UNSPACED}]"
    before = "" if _unspaced(word[0]) else rf"(?<!{spaced_letter})"
    after = "" if _unspaced(word[-1]) else rf"(?!{spaced_letter})"
    # booru tags are written with _ or a space alike (WD14 taggers, kohya_ss' options): ohwx_char is ohwx char
    written = "[_ ]+".join(re.escape(part) for part in re.split(r"[_ ]+", word)) if re.fullmatch(
        r"[^_ ]+(?:[_ ]+[^_ ]+)+", word) else re.escape(word)  # (not one with _ at an end: _ohwx is no ohwx)
    return re.search(rf"{before}{written}{after}", caption, re.IGNORECASE) is not None


def _unspaced(char: str) -> bool:
    return re.match(f"[{UNSPACED}]", char) is not None
