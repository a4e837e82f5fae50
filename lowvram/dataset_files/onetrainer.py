"""A OneTrainer concepts file (the JSON list its Concepts tab saves, such as `training_concepts/concepts.json`, or a
OneTrainer training config that holds its concepts inline) read as lowvram's dataset: each enabled concept's image
folder with its repeats, loss weight and captions, and the lowvram options its image and text settings set. A
relative path is found from the current folder, else beside the file or one folder up (OneTrainer reads it from its
own folder, which holds training_concepts/).

A concept's balancing becomes its repeats, fractional ones included (0.5 trains a seeded half of its images each
epoch, as OneTrainer shows half of them), its loss weight scales its images' loss, and its captions come from
where its prompt source says: each image's `.txt`, one prompt file for the whole concept, or the file name.
Augmentation and tag settings are the first training concept's for the run; a concept that sets one otherwise
trains its images with its own, with a note. A validation concept becomes `--validation-data`; a prior prediction
concept, regularization images with `--prior-prediction`. A concept's resolution override trains its images at that
resolution. What lowvram cannot do as asked (rotation, a resolution list) is refused in one line naming the setting
and the fix, rather than trained differently.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from lowvram.dataset_files.subsets import DatasetFile, Subset, image_tree, images_in, settle
from lowvram.errors import LowvramError
from lowvram.files import local_path, not_found_hint, text_of
from lowvram.kohya_values import as_number
from lowvram.onetrainer_optimizers import misspelt
from lowvram.prompts import is_prompt_list

# a concept's own keys lowvram reads; the rest of its image and text settings are below
CONCEPT_KEYS = {"name", "path", "enabled", "type", "validation_concept", "include_subdirectories", "balancing",
                "balancing_strategy", "repeats", "loss_weight", "image_variations", "text_variations", "image",
                "text", "seed", "__version", "concept_stats"}  # concept_stats: OneTrainer's own cached counts
# OneTrainer's keys of a concept's image and text settings (ConceptImageConfig, ConceptTextConfig): what a typo
# among them is said against
BLOCK_KEYS = {
    "image": {"enable_crop_jitter", "enable_random_flip", "enable_fixed_flip", "enable_random_rotate",
              "enable_fixed_rotate", "random_rotate_max_angle", *(f"{enable}_{kind}" for kind in
                                                                  ("brightness", "contrast", "saturation", "hue")
                                                                  for enable in ("enable_random", "enable_fixed")),
              *(f"random_{kind}_max_strength" for kind in ("brightness", "contrast", "saturation", "hue")),
              "enable_resolution_override", "resolution_override", "enable_random_circular_mask_shrink",
              "enable_random_mask_rotate_crop"},
    "text": {"prompt_source", "prompt_path", "enable_tag_shuffling", "tag_delimiter", "keep_tags_count",
             "tag_dropout_enable", "tag_dropout_mode", "tag_dropout_probability", "tag_dropout_special_tags_mode",
             "tag_dropout_special_tags", "tag_dropout_special_tags_regex", "caps_randomize_enable",
             "caps_randomize_mode", "caps_randomize_probability", "caps_randomize_lowercase"},
}
PROMPT_SOURCES = ("sample", "concept", "filename")
# on, they would change what the model is shown in a way lowvram does not do: refused, not trained without
REFUSED = {
    "image.enable_fixed_flip": "flip those images' files instead; lowvram's --flip flips at random",
    "image.enable_random_rotate": "lowvram does not rotate images; turn it off",
    "image.enable_fixed_rotate": "rotate those images' files instead",
    "image.enable_fixed_brightness": "edit those images' files instead; lowvram varies colour at random only",
    "image.enable_fixed_contrast": "edit those images' files instead; lowvram varies colour at random only",
    "image.enable_fixed_saturation": "edit those images' files instead; lowvram varies colour at random only",
    "image.enable_fixed_hue": "edit those images' files instead; lowvram varies colour at random only",
    "image.enable_random_circular_mask_shrink": "lowvram uses masks as drawn; turn it off",
    "image.enable_random_mask_rotate_crop": "lowvram uses masks as drawn; turn it off",
    "text.caps_randomize_enable": "lowvram trains captions as written; turn it off",
}
JITTER_KINDS = ("brightness", "contrast", "saturation")  # lowvram's colour jitter (hue: not varied, said)


def concepts_in(doc: Any) -> list | None:
    """The concepts of a OneTrainer concepts file, or of a training config that holds them; None for other files."""
    if isinstance(doc, list) and not is_prompt_list(doc):  # (a samples.json is a list of objects too)
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("concepts"), list):
        return doc["concepts"]
    return None


def read_concepts(concepts: list, path: Path) -> DatasetFile:
    """The dataset OneTrainer's `concepts` (read from `path`) describe. Raises LowvramError, one line per problem,
    all at once."""
    problems: list[str] = []
    notes: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{path}: {key}: {text}")

    # (concept, its image folders, where) of each training concept, and of each prior prediction one
    training: list[tuple[dict, list[Path], str]] = []
    priors: list[tuple[dict, list[Path], str]] = []
    validation: list[tuple[list[Path], str]] = []
    for number, concept in enumerate(concepts, 1):
        where = f"concepts[{number}]"
        if not isinstance(concept, dict):
            problem(where, f"{concept!r} is not a concept (a JSON object with a path)")
            continue
        where += f" ({concept['name']})" if concept.get("name") else ""
        if _misspelt(concept, where, problem):  # (a misspelt type trained a validation concept)
            continue
        if concept.get("enabled", True) is False:
            notes.append(f"{where}: disabled in OneTrainer, left out")
            continue
        role = _role(concept, where, problem)
        folders = _folders(concept, path, where, problem)
        if role is None or folders is None:
            continue
        if role == "validation":
            validation.append((folders, where))
        elif role == "prior":
            priors.append((concept, folders, where))
            notes.append(f"{where}: prior prediction: its images are regularization images, drawn by its balancing "
                         "as OneTrainer draws every concept (--reg-balance repeats), their target the model's own "
                         "prediction (--prior-prediction)")
        else:
            training.append((concept, folders, where))
        if role in ("training", "prior"):  # their images train: with their own image and text settings
            for key, why in REFUSED.items():
                section, name = key.split(".")
                if (concept.get(section) or {}).get(name) is True:
                    problem(f"{where} {key}", why)
            unknown = sorted(set(concept) - CONCEPT_KEYS)
            if unknown:
                notes.append(f"{where}: not carried over (lowvram has no such setting): {', '.join(unknown)}")
    if not training and not problems:
        problem("concepts", "no enabled training concept; enable one, or add one with the folder of the images to "
                "train on")
    values, owns = settle([_options(concept, where, notes, problem) for concept, _, where in training + priors],
                          notes, "concepts")
    subsets = (_subsets(training, path, notes, problem, owns=owns[:len(training)])
               + _subsets(priors, path, notes, problem, regularization=True, owns=owns[len(training):]))
    values["caption_lines"] = "each"  # OneTrainer draws one of a caption's lines each time
    if not values.get("keep_tokens"):
        values.pop("keep_tokens", None)
    if len(validation) > 1:
        problem("validation concepts", f"{len(validation)} of them; lowvram validates on one folder: keep one, or "
                "move their images into one folder")
    elif validation:
        folders, where = validation[0]
        if len(folders) > 1:
            notes.append(f"{where}: validated on the images directly in {folders[0]}, not its subfolders")
        values["validation_data"] = str(folders[0])
    if priors:
        values["prior_prediction"] = True
        values["reg_balance"] = "repeats"  # (kohya's balance repeated 2 of them to 15 where balancing said 1 each)
    if problems:
        raise LowvramError("\n".join(problems))
    return DatasetFile(path.resolve(), "OneTrainer concepts file", tuple(subsets), values, tuple(notes),
                       "prior prediction")


def _misspelt(concept: dict, where: str, problem) -> bool:
    """Whether a key of the concept, or of its image or text settings, misspells one the concept leaves out (`typ`,
    `concept_type`: its word added, `enable_tag_shufling`): refused, naming it, as OneTrainer passes over it unsaid
    and trains the setting's default (a validation concept trained)."""
    found = False
    for block, known in (("", CONCEPT_KEYS), *BLOCK_KEYS.items()):
        keys = concept.get(block) if block else concept
        if not isinstance(keys, dict):
            continue
        missing = sorted(known - set(keys))
        for key in sorted(set(keys) - known):
            close = difflib.get_close_matches(key.removeprefix("concept_") if not block else key, missing, n=1,
                                              cutoff=0.85)
            if close:
                problem(f"{where} {block + '.' if block else ''}{key}",
                        misspelt(f"{block + '.' if block else ''}{close[0]}"))
                found = True
    return found


def _role(concept: dict, where: str, problem) -> str | None:
    """"training", "validation" or "prior" (OneTrainer's concept type, or its older validation_concept switch)."""
    kind = str(concept.get("type") or ("VALIDATION" if concept.get("validation_concept") else "STANDARD")).upper()
    if kind == "STANDARD":
        return "training"
    if kind == "VALIDATION":
        return "validation"
    if kind == "PRIOR_PREDICTION":
        return "prior"
    problem(f"{where} type", f"{kind!r} is not a concept type lowvram reads (STANDARD, VALIDATION, PRIOR_PREDICTION)")
    return None


def _folders(concept: dict, path: Path, where: str, problem) -> list[Path] | None:
    """The concept's image folder, and its subfolders with include_subdirectories, those that hold images (a folder
    of folders was said to hold no images, nothing of it training, of subfolders that trained); None (a problem
    recorded) when it names none."""
    given = concept.get("path")
    if not isinstance(given, str) or not given:
        problem(where, "no path; name the folder its images are in")
        return None
    folder = local_path(given, path, levels=2)
    if not folder.is_dir():
        problem(f"{where} path", f"{'not a folder' if folder.exists() else 'folder not found'}: {given}"
                                 f"{not_found_hint(given)}")
        return None
    folder = folder.resolve()
    return image_tree(folder) if concept.get("include_subdirectories") else [folder]


def _subsets(concepts: list[tuple[dict, list[Path], str]], path: Path, notes: list[str], problem,
             regularization: bool = False, owns: list[dict[str, Any]] | None = None) -> list[Subset]:
    """Each concept's folders as subsets: its balancing as their repeats (a fractional part trains that share of
    its images each epoch, as OneTrainer's does), its loss weight and captions, and the options it sets otherwise
    than the run (`owns`, per concept)."""
    subsets = []
    for number, (concept, folders, where) in enumerate(concepts):
        balancing = as_number(concept.get("balancing", concept.get("repeats", 1.0)), f"{where} balancing", problem)
        strategy = str(concept.get("balancing_strategy") or "REPEATS").upper()
        samples = (number, balancing) if strategy == "SAMPLES" else None
        if samples:  # images shown per epoch, whatever the concept holds
            count = len(images_in(folders))
            balancing = balancing / count if count else 1.0
        elif strategy != "REPEATS":
            problem(f"{where} balancing_strategy", f"{strategy!r} is not REPEATS or SAMPLES")
        if balancing <= 0:
            problem(f"{where} balancing", f"{balancing:g} would leave its images out; give more than 0, or disable "
                    "the concept")
        weight = as_number(concept.get("loss_weight", 1.0), f"{where} loss_weight", problem)
        if weight <= 0:
            problem(f"{where} loss_weight", f"{weight:g} would train nothing on it; give more than 0, or disable the "
                    "concept")
        captions = _captions(concept, folders, path, where, notes, problem)
        label = str(concept.get("name") or "").strip() or folders[0].name
        resolution = _resolution_override(concept.get("image") or {}, where, problem)
        own = owns[number] if owns else None
        # (its name is a label, no caption: an image without a caption file trains without one, as in OneTrainer)
        subsets += [Subset(folder, balancing, label, regularization, loss_weight=weight, resolution=resolution,
                           label_captions=False, samples=samples,
                           settings=own or None, captions=None if captions is None else {  # (each folder its own)
                               key: caption for key, caption in captions.items() if Path(key).parent == folder})
                     for folder in folders]
    return subsets


def _resolution_override(image: dict, where: str, problem) -> int | None:
    """A concept's own resolution (its images train at it, the others at --resolution): one square side."""
    if image.get("enable_resolution_override") is not True:
        return None
    text = str(image.get("resolution_override") or "").strip()
    width, _, height = text.lower().partition("x")
    if width.isdigit() and height in ("", width) and int(width) >= 64 and int(width) % 8 == 0:
        return int(width)
    problem(f"{where} image.resolution_override", f"{text!r}: lowvram reads one square resolution per concept, a "
            "multiple of 8 from 64 (e.g. 768); aspect ratios come from its buckets")
    return None


def _captions(concept: dict, folders: list[Path], path: Path, where: str, notes: list[str], problem
              ) -> dict[str, str] | None:
    """Image key -> caption where the concept's prompt source is not the images' own caption files."""
    text = concept.get("text") or {}
    source = str(text.get("prompt_source") or "sample").lower()
    if source == "sample":
        return None
    if source not in PROMPT_SOURCES:
        problem(f"{where} text.prompt_source", f"{source!r} is not one of {', '.join(PROMPT_SOURCES)}")
        return None
    images = images_in(folders)
    if source == "filename":
        return {str(image.with_suffix("")): image.stem for image in images}
    if not text.get("prompt_path"):  # an empty path would name the current folder
        problem(f"{where} text.prompt_path", "none given for prompt_source concept; name the text file of the "
                "concept's prompt, or set prompt_source to sample")
        return None
    prompt_file = local_path(str(text["prompt_path"]), path, levels=2)
    try:
        # (a BOM, Notepad's, was read as the first caption's first characters: three junk tokens before the trigger)
        lines = [line.strip() for line in text_of(prompt_file).splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        problem(f"{where} text.prompt_path", f"can't read {prompt_file} ({getattr(exc, 'strerror', None) or exc}); "
                "name the text file of the concept's prompt")
        return None
    if not lines:
        problem(f"{where} text.prompt_path", f"{prompt_file} is empty; write the concept's prompt in it")
        return None
    return {str(image.with_suffix("")): "\n".join(lines) for image in images}  # each line a caption, drawn in turn


def _options(concept: dict, where: str, notes: list[str], problem) -> dict[str, Any]:
    """The lowvram options a training concept's image and text settings stand for, OneTrainer's defaults where
    the file leaves a setting out."""
    image, text = concept.get("image") or {}, concept.get("text") or {}
    jitter = [as_number(image.get(f"random_{kind}_max_strength", 0.0), f"{where} image.random_{kind}_max_strength",
                        problem) for kind in JITTER_KINDS if image.get(f"enable_random_{kind}")]
    if image.get("enable_random_hue"):
        notes.append(f"{where}: image.enable_random_hue: lowvram varies brightness, contrast and saturation, not hue")
    options = {"flip": image.get("enable_random_flip", True) is not False,
               "crop": "random" if image.get("enable_crop_jitter", True) is not False else "center",
               "color_jitter": max(jitter, default=0.0),
               "shuffle_tags": text.get("enable_tag_shuffling") is True,
               "keep_tokens": as_number(text.get("keep_tags_count", 1), f"{where} text.keep_tags_count", problem, int),
               "tag_dropout": as_number(text.get("tag_dropout_probability", 0.0),
                                        f"{where} text.tag_dropout_probability", problem)
               if text.get("tag_dropout_enable") else 0.0}
    variants = as_number(concept.get("image_variations", 1), f"{where} image_variations", problem, int)
    captions = as_number(concept.get("text_variations", 1), f"{where} text_variations", problem, int)
    # OneTrainer caches one of each by default; lowvram's defaults (None) then cover the augmentations asked for
    options["latent_variants"] = variants if variants > 1 else None
    varied = options["flip"] or options["crop"] == "random" or options["color_jitter"]
    said = ": image_variations 1 with "
    earlier = next((i for i, note in enumerate(notes) if said in note), None)  # (one note for the file, naming each)
    if variants <= 1 and varied and earlier is not None:
        notes[earlier] = notes[earlier].replace(said, f", {where}{said}", 1)
    elif variants <= 1 and varied:
        # (lowvram's first variant is the image as it is: one cached variant would never flip nor move the crop)
        notes.append(f"{where}{said}random flip, crop or colour jitter: lowvram caches 2 variants per image (4 "
                     "with crop or colour jitter), its first as it is, so that epochs vary (OneTrainer draws one of "
                     "each per image and caches that); --latent-variants 1 caches one, as it is, in a half or a "
                     "quarter of the time")
    options["caption_variants"] = captions if captions > 1 else None
    if not (options["shuffle_tags"] or options["tag_dropout"]):
        # OneTrainer keeps one tag by default, whether or not anything moves the tags: a concept whose tags stay put
        # keeps none and differs from no other concept in it
        del options["keep_tokens"]
    if str(text.get("tag_delimiter", ",")).strip() != ",":
        problem(f"{where} text.tag_delimiter", "lowvram splits tags at commas; use commas in the captions")
    if text.get("tag_dropout_enable"):
        mode = str(text.get("tag_dropout_mode") or "FULL").upper()
        if mode != "RANDOM":  # (OneTrainer's RANDOM is kohya's caption_tag_dropout_rate, and lowvram's)
            done = ("leaves out all the tags past the kept ones together" if mode == "FULL"
                    else "weighs the chance toward the last tags")
            notes.append(f"{where}: text.tag_dropout_mode {mode} (OneTrainer's {done}): lowvram leaves out each tag on "
                         "its own with the probability given, as OneTrainer's RANDOM does")
        if str(text.get("tag_dropout_special_tags_mode") or "NONE").upper() != "NONE":
            problem(f"{where} text.tag_dropout_special_tags_mode", "lowvram drops any tag past --keep-tokens; set it "
                    "to NONE, and put the tags to keep first")
    return options
