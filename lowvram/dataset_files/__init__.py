"""Dataset files other trainers write, given as `--data`: a kohya dataset config (`.toml` or `.json`) or a
OneTrainer concepts file (`.json`), each read as lowvram's dataset (`DatasetFile`): its image folders and the
options its settings set. The file's content says which it is."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from lowvram.dataset_files.kohya import is_kohya_dataset, is_kohya_metadata, kohya_metadata_use, read_kohya_dataset
from lowvram.dataset_files.onetrainer import concepts_in, read_concepts
from lowvram.dataset_files.subsets import DatasetFile, Subset
from lowvram.errors import LowvramError
from lowvram.files import decode_hint, local_path, not_found_hint, not_utf8, text_of
from lowvram.other_trainers import is_simpletuner_backends, simpletuner_backends_problem
from lowvram.prompts import is_prompt_list, prompt_list_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATASET_SUFFIXES = (".toml", ".json")
__all__ = ["DATASET_SUFFIXES", "DatasetFile", "Subset", "has_regularization_subsets", "is_dataset_document",
           "is_dataset_file", "read_dataset"]


def is_dataset_file(data: str | Path | None) -> bool:
    """Whether `--data` names a dataset file rather than an image folder."""
    return (isinstance(data, (str, Path)) and Path(data).suffix.lower() in DATASET_SUFFIXES  # (a TOML's list: no)
            and Path(data).is_file())


def is_dataset_document(doc: Any) -> bool:
    """Whether a file's content is a dataset file's (kohya's dataset config, OneTrainer's concepts)."""
    return concepts_in(doc) is not None or is_kohya_dataset(doc)


def has_regularization_subsets(data: str | Path | None) -> bool:
    """Whether `--data` is a dataset file with regularization subsets (kohya's is_reg, OneTrainer's prior
    prediction concepts)."""
    return is_dataset_file(data) and bool(read_dataset(Path(data)).folders(regularization=True))


def read_dataset(path: Path, named_by: Path | None = None) -> DatasetFile:
    """The dataset a dataset file describes (`named_by`: the OneTrainer training config whose concepts file it is).
    Raises LowvramError, one line per problem, all at once."""
    path = Path(path)
    doc = _load(path)
    if is_simpletuner_backends(doc):  # (a JSON list, as OneTrainer's concepts are)
        raise LowvramError(simpletuner_backends_problem(path, doc, "--data"))
    if is_prompt_list(doc):
        raise LowvramError(prompt_list_problem(path, "--data"))
    concepts = concepts_in(doc)
    if concepts is not None:
        return read_concepts(concepts, path)
    if is_kohya_dataset(doc):
        return read_kohya_dataset(doc, path)
    if isinstance(doc, dict) and isinstance(doc.get("concept_file_name"), str) and doc["concept_file_name"]:
        # its concepts file, found as --config finds it (OneTrainer names it from its own folder): the path the
        # refusal gave, training_concepts/concepts.json, was not there from the user's folder
        concepts = local_path(doc["concept_file_name"], path, levels=2)
        if named_by is not None:  # (one naming itself, or two each other, recursed without end)
            raise LowvramError(f"--data: {named_by} names {path} as its concepts file, a training config too; name "
                               "the concepts file (a JSON list of concepts)")
        if not concepts.is_file():
            raise LowvramError(f"--data: {path} is a OneTrainer training config; its concepts file "
                               f"{doc['concept_file_name']} is not found beside it nor in OneTrainer's folder above "
                               "it: pass the concepts file as --data")
        dataset = read_dataset(concepts, named_by=path)
        note = (f"{path.name} is a OneTrainer training config: its concepts file {concepts} is read; --config "
                f"{path} reads its training settings too")
        return replace(dataset, notes=(*dataset.notes, note))
    if is_kohya_metadata(doc):
        raise LowvramError(f"--data: {path} is kohya's fine-tuning metadata (captions by image), which a dataset "
                           f"file names: {kohya_metadata_use(path, 'IMAGES')}")
    raise LowvramError(f"--data: {path} is neither a kohya dataset config ([[datasets]] of [[datasets.subsets]]) nor "
                       "a OneTrainer concepts file (a JSON list of concepts); a training config (kohya's, "
                       "OneTrainer's or lowvram's) goes to --config; or give --data an image folder")


def _load(path: Path) -> Any:
    text = ""
    try:
        text = text_of(path)  # a BOM (Notepad's) or UTF-16 (PowerShell's) too
        return json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise LowvramError(f"--data: file not found: {path}{not_found_hint(path)}") from None
    except UnicodeDecodeError as exc:  # (a ValueError too: Notepad's ANSI)
        raise LowvramError(f"--data: {not_utf8(path, exc)}") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise LowvramError(f"--data: {path} is not valid {path.suffix[1:].upper()}: {exc}{decode_hint(text, exc)}"
                           ) from None
    except OSError as exc:
        raise LowvramError(f"--data: can't read {path}: {exc.strerror or exc}") from None
