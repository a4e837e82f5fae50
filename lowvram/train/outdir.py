"""One output folder, one run. A run records who it is in the folder (`lowvram-run.json`: its recipe, see
`lowvram.train.identity`, and that recipe's hash), and holds a lock file while it writes there. A new run in a
folder that holds another run's files stops and says what to do; `--resume` continues only the run the folder (or
the checkpoint) belongs to; `--overwrite` moves the earlier run's files into `archive/` rather than deleting them;
a second run on the same folder at the same time is refused, naming the first."""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import json
import re
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from lowvram.config import RunConfig, fields_by_name
from lowvram.dataset_files import is_dataset_file, read_dataset
from lowvram.errors import Busy, LowvramError, Refused, shell_line
from lowvram.files import (
    DiskFull,
    human_size,
    make_folders,
    not_found_hint,
    remove_orphans,
    write_problem,
    write_text,
)
from lowvram.lora_header import read_header
from lowvram.lora_metadata import HASHES, RECIPE_KEY, addnet_hash, hashes
from lowvram.resolve import ResolvedRun
from lowvram.run_files import (
    CHECKPOINTS,
    LOGS,
    LORA_SUFFIX,
    METRICS,
    OPTIONS_HEADER,
    RECORD,
    SAMPLES,
    copy_destination,
    diffusers_copy,
    final_lora,
    final_samples_of,
    is_options_file,
    lora_list_folder,
    options_path,
    saved_lora,
    step_image,
    step_save,
)
from lowvram.train import checkpoint_folders
from lowvram.train.folder_lock import FolderLock
from lowvram.train.identity import MOVABLE, differences, identity, model_fingerprint, moved_paths, recipe, same_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HALF_WRITTEN_CHECKPOINT = re.compile(r"^\.step-[a-z0-9_]{8}$")  # tempfile.mkdtemp(prefix=".step-")
ARCHIVE = "archive"
SHARED = (METRICS, CHECKPOINTS, SAMPLES, LOGS)  # what every run writes under these names


def write_options(path: Path, text: str) -> bool:
    """Write the run's options to `path` unless a file lowvram did not write is there (the user's own config, kept
    in the output folder under the run's name): that one stays as it is. Whether they were written."""
    if path.is_file() and not is_options_file(path):
        return False
    write_text(path, OPTIONS_HEADER + text)
    return True


def saved_options(config: RunConfig) -> dict[str, dict]:
    """The run's options as its `.toml` beside its LoRA keeps them: its output folder as the folder the file lies
    in (a config file's paths are relative to the file), so that a run folder copied or renamed resumes there
    (`configure.read_toml`), under the name its record keeps (`configure.build_config`)."""
    options = config.to_toml_dict()
    options["output"]["output"] = "."
    # what the dataset file settles stays the file's: kept here, a later edit of it (its first subset's keep_tokens)
    # was replaced by the run's copy on --config ... --resume
    for section, settled in dataset_file_options(config).items():
        for name in settled:
            del options[section][name]
    return options


def dataset_file_options(config: RunConfig) -> dict[str, dict]:
    """The run's options its dataset file (a kohya dataset config, OneTrainer's concepts) sets, by section: read
    from the file at each start, so its `.toml` leaves them out."""
    if not is_dataset_file(config.data.data):
        return {}
    options = config.to_toml_dict()
    dataset = read_dataset(Path(config.data.data))
    settled: dict[str, dict] = {}
    for name, value in (dataset.values | {name: value for name, (value, _) in dataset.assumed.items()}).items():
        section = fields_by_name()[name][0] if name in fields_by_name() else ""
        if name in options.get(section, {}) and options[section][name] == (
                list(value) if isinstance(value, tuple) else value):
            settled.setdefault(section, {})[name] = options[section][name]
    return settled


def continue_line(folder: Path, name: str, processes: int = 1) -> str:
    """The command that continues the run in `folder` from its newest checkpoint: under accelerate's launcher with
    as many `processes` as wrote it, which a checkpoint resumes only with."""
    launch = ("accelerate", "launch", "--multi_gpu", "--num_processes", processes, "-m", "lowvram") if processes > 1 \
        else ("lowvram",)
    return shell_line(*launch, "train", "--config", options_path(folder, name), "--resume", "auto")


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def claimed(run: ResolvedRun, accelerator, main: bool):
    """Hold the output folder for this run: the lock, the ownership check, the record. The main process decides;
    every process raises the same error, so none waits forever on a collective."""
    folder = run.config.output_dir
    lock = FolderLock(folder) if main else None
    problem, note, existed = None, None, folder.exists()
    if lock is not None:
        try:
            unwritable = write_problem(folder)
            if unwritable:
                raise LowvramError(f"--output: {unwritable}; choose an --output folder you can write to")
            lock.acquire()
            processes_problem(run, accelerator.num_processes)  # (before anything of the folder is set aside)
            note = take_ownership(run)
        except LowvramError as exc:
            lock.release()
            if not existed and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a refused run leaves no folder behind (an --output mistyped, say)
            problem = (str(exc), isinstance(exc, Busy))  # (a run holding the folder: exit 75, to try again later)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem])[0]
    if problem:
        said, busy = problem
        raise (Busy if busy else Refused)(said)  # (every process raises it: the main one says it)
    refused = False
    try:
        yield note
    except LowvramError:
        refused = True
        raise
    finally:
        if lock is not None:
            # a run refused before it wrote anything but its record (an empty --reg-data) leaves no folder behind:
            # the next run there said "starting over: the earlier run ... left no checkpoint or LoRA" of none (the
            # record removed while the lock holds off another run's)
            unclaimed = False
            with contextlib.suppress(OSError):
                if refused and not existed and sorted(path.name for path in folder.iterdir()) == sorted(
                        [RECORD, lock.path.name]):
                    (folder / RECORD).unlink()
                    unclaimed = True
            lock.release()
            if unclaimed:
                with contextlib.suppress(OSError):  # (another run's files there meanwhile: it stays)
                    folder.rmdir()


def processes_problem(run: ResolvedRun, processes: int) -> None:
    """Refuse, before the model loads, a resume of the checkpoint another lowvram version or a run of another
    number of processes wrote (the one `--resume` names, as the resume finds it; refusals of its own are the
    resume's to say)."""
    if not run.config.training.resume:
        return
    try:
        found, _ = checkpoint_folders.resolve(run.config.training.resume, run.config.output_dir, recipe(run))
    except LowvramError:
        return
    if other := checkpoint_folders.format_refusal(found):
        raise Refused(other)
    saved_by = checkpoint_folders.processes_of(found)
    if saved_by not in (None, processes):
        raise Refused(checkpoint_folders.processes_refusal(found, saved_by, processes))


def nothing_to_resume(config):
    """`--resume auto` on a folder with no checkpoint and no LoRA of a run yet starts the run, as the diffusers
    scripts' `--resume_from_checkpoint latest` does: one command serves a notebook cell's first start and its rerun
    after a disconnect. The config to run, and the line that says so (None: as given)."""
    folder = config.output_dir
    if config.training.resume != "auto" or checkpoint_folders.complete(checkpoint_folders.checkpoint_root(folder)):
        return config, None
    saves = sorted(_earlier_loras(folder, read_record(folder)), key=lambda path: path.stat().st_mtime)
    lora = folder / final_lora(config.output_name)
    if lora.exists() or saves:  # an earlier run's LoRA whose checkpoint a full disk or a kill took: not continued
        newest = lora if lora.exists() else saves[-1]
        raise LowvramError(f"--resume auto: {folder} holds {newest.name} but no checkpoint to continue from (a full "
                           f"disk, or a kill before one was written): {train_on_from(newest)}, or start over with "
                           f"--overwrite (its files move to {folder / ARCHIVE}/)")
    weights = config.network.network_weights
    if weights and not Path(weights).is_file():  # (the checks let it pass for a checkpoint, which holds them)
        raise LowvramError(f"--network-weights: file not found: {weights}{not_found_hint(weights)} (--resume auto "
                           f"finds no checkpoint in {folder} to continue from, so the run starts from it)")
    new = dataclasses.replace(config, training=dataclasses.replace(config.training, resume=None))
    return new, f"--resume auto: no checkpoint in {folder} yet, so the run starts from the beginning"


def another_start_problem(config) -> str | None:
    """The line a resume stops at whose --network-weights is not the LoRA its run started from (its .toml's): the
    checkpoint holds the adapters, so it was not read, yet the run's .toml and its LoRA's recipe then named it."""
    given, path = config.network.network_weights, options_path(config.output_dir, config.output_name)
    if not (config.training.resume and given and path.is_file()):
        return None
    try:
        recorded = (tomllib.loads(path.read_text(encoding="utf-8")).get("network") or {}).get("network_weights")
    except (OSError, ValueError):
        return None
    if recorded and (recorded == given or Path(recorded).name == Path(given).name):
        return None  # (the run's own, or it moved)
    started = f"from {recorded}" if recorded else "with fresh adapters"
    return (f"--network-weights {given}: the run resumes from its checkpoint, which holds its adapters (it started "
            f"{started}), so it would not be read; drop it, or start a new run from it in another --output")


def existing_lora_problem(config) -> str | None:
    """The line a new run (neither --resume nor --overwrite) stops at when its LoRA is there already."""
    lora = config.output_dir / final_lora(config.output_name)
    if lora.exists() and not config.output.overwrite and not config.training.resume:
        record = read_record(lora.parent)
        theirs = (record or {}).get("recipe") or {}
        # (told to continue with --resume auto, which then refused it as another run: the options read here)
        # (not the optimizer: --auto picks it after this check)
        ours = {"--rank": config.network.rank, "--network": config.network.network, "--seed": config.training.seed,
                "--lora-layers": config.network.lora_layers}
        other = [f"{flag} {theirs[flag]} there, {value} here" for flag, value in ours.items()
                 if flag in theirs and theirs[flag] != value]
        if other:
            go_on = f"it is another run's ({'; '.join(other)})"
        elif checkpoint_folders.complete(checkpoint_folders.checkpoint_root(lora.parent)):
            go_on = "continue its run with --resume auto"
        elif record is None:  # a copy, another tool's file: no run of lowvram's wrote it there
            go_on = f"no lowvram run is recorded there: {train_on_from(lora)}"
        else:
            go_on = (f"its run has no checkpoint there (removed, or lost to a full disk or a kill while saving it): "
                     f"{train_on_from(lora)}")
        return (f"--output: {lora} exists; {go_on}, start over with --overwrite (the earlier files move to archive/), "
                "or choose another --output")
    return None


def is_save_of(name: str, path: Path) -> bool:
    """Whether `path` is named as a LoRA the run `name` saves (its final, step, epoch and best LoRAs); one of a bare
    number (kohya's epoch save, <name>-000002) only where its header does not say another run's (a run named by a
    date, mychar-240101, kept beside mychar)."""
    found = saved_lora(name).fullmatch(path.name)
    if not found or not (found.group(2) or "").isdigit():
        return found is not None
    try:
        metadata = read_header(path)[0]
    except (OSError, ValueError):
        return False
    return metadata.get("ss_epoch", found.group(2).lstrip("0")) == found.group(2).lstrip("0") and \
        metadata.get("ss_output_name", name) == name


def copy_problem(config) -> str | None:
    """Where --copy-to names a file that is not this run's LoRA (another run's, another tool's): refused unless
    --overwrite, under which `copy_final` moves it to the run's archive/ rather than write over it."""
    if not config.output.copy_to or config.output.overwrite:
        return None
    copy = copy_destination(config.output.copy_to, config.output_name)
    ours = [path for path in config.output_dir.glob(f"*{LORA_SUFFIX}") if is_save_of(config.output_name, path)
            ] if config.output_dir.is_dir() else []  # (its final LoRA, or an earlier one kept as a step's)
    if copy.is_file() and not any(filecmp.cmp(copy, lora, shallow=False) for lora in ours):
        return (f"--copy-to: {copy} exists, and is not this run's LoRA; name another file (or --name), or pass "
                f"--overwrite to replace it (it moves to {config.output_dir / ARCHIVE}/)")
    return None


def train_on_from(lora: Path) -> str:
    """How to train further from a LoRA whose run cannot be resumed: as a start, in a new folder."""
    return f"train on from it with --network-weights {shell_line(lora)} and another --output"


def ownership_problem(run: ResolvedRun) -> str | None:
    """The line this run stops at over its --output folder (None: the folder is its to take), found without
    writing there, so that the UI can ask before it starts a run: another run's files without --overwrite, another
    run's checkpoints on --resume, an --network-weights file that --overwrite would move away."""
    config, folder = run.config, run.config.output_dir
    problem = existing_lora_problem(config) or copy_problem(config)
    if problem:
        return problem
    ours, record = recipe(run), read_record(folder)
    checkpoints = checkpoint_folders.complete(checkpoint_folders.checkpoint_root(folder))
    # kohya_ss users keep mychar, mychar_v2 ... in one folder; lowvram keeps one run (and its checkpoints) per folder
    # (--resume with another name is asked for: the run trained further, saved under the new name)
    named = record.get("name") if record and record.get("name") != config.output_name else None
    if config.training.resume:
        resumed = Path(config.training.resume) if config.training.resume != "auto" else None
        if resumed and resumed.resolve().is_relative_to((folder / ARCHIVE).resolve()) and (record or checkpoints):
            # (it overwrote the branch's final LoRA and saves here, unarchived: the two branches mixed in one folder)
            return (f"--resume: {resumed} is in {folder}'s {ARCHIVE}/, of a branch this run left: resumed here, its "
                    "files would mix with those of the branch the folder holds; resume it into a folder of its own "
                    f"(--output {folder}-{resumed.name})")
        recorded, model = (record or {}).get("model_fingerprint"), model_fingerprint(config.model.model)
        if recorded and model and recorded != model:  # (the same name, moved or replaced: other weights)
            then = record["recipe"].get("--model")
            # (its file, header included: the same weights saved again with another date in it differ too)
            return (f"--model: {config.model.model} is not the model the run in {folder} trained on: its file "
                    f"differs from {then}'s, recorded when the run started (other weights, or the same saved again "
                    "with other metadata); give that file, or start a new run in another --output")
        if record and not same_run(record, ours):
            weights = config.network.network_weights
            gone = (f" (--network-weights {weights} is gone, so the options it gave are not read: --config "
                    f"{options_path(folder, config.output_name)} gives them)" if weights and not Path(weights).exists()
                    else "")
            renamed = [f"{flag} {Path(str(then)).name}" for flag in MOVABLE if (then := record["recipe"].get(flag))
                       and then != ours.get(flag) and not Path(str(then)).exists()]
            options = options_path(folder, record.get("name") or config.output_name)
            if not options.is_file():  # (an older lowvram's folder: its own <name>.toml, without the header)
                options = options.with_name(f"{record.get('name') or config.output_name}.toml")
            given = f" (--config {shell_line(options)} gives them)" if options.is_file() else ""
            moved = (f"; a model or dataset moved here keeps its name ({', '.join(renamed)}): name it so, or"
                     if renamed else f"; pass the options it was trained with{given}, or")
            return (f"--resume: {folder} holds another run ({differences(record['recipe'], ours)}){gone}{moved} "
                    "start a new run in another --output")
        if config.training.resume != "auto" or not checkpoints:  # a folder of another run: refused before the
            try:  # data is cached and the model loads, not after
                checkpoint_folders.resolve(config.training.resume, folder, ours)
            except LowvramError as exc:
                return str(exc)
        lora = folder / final_lora(config.output_name)
        if lora.exists() and record is None and not config.output.overwrite:
            if checkpoints:  # (its record lost or cut short: the checkpoints are whole, and --overwrite keeps them)
                unread = "is unreadable" if (folder / RECORD).exists() else "is missing"
                return (f"--output: {lora} exists and the run record {RECORD} {unread}, so it is of no run known "
                        f"there; pass --overwrite to resume from {folder / CHECKPOINTS} anyway (that LoRA is kept, as "
                        "its step's save or in archive/), or choose another --name")
            return f"--output: {lora} exists; pass --overwrite to replace it, or choose another --name"
        return None
    unrecorded = [] if record or checkpoints else _unrecorded_saves(folder, config.output_name)
    if unrecorded and not config.output.overwrite:
        more = f" and {len(unrecorded) - 1} more" if len(unrecorded) > 1 else ""
        return (f"--output: {folder} holds {unrecorded[0].name}{more} of no lowvram run there, under a name this run "
                f"saves to; {_start_over(folder, unrecorded, 'they')}, or choose another --output or --name")
    weights = config.network.network_weights
    if config.output.overwrite and (listed := _archived_in_a_lora_list(folder, unrecorded or archived(
            folder, record, config.output_name))):
        return listed
    if unrecorded:  # --overwrite moves them, and nothing else
        if weights and Path(weights).resolve() in {path.resolve() for path in unrecorded}:
            return (f"--network-weights: {weights} is among the files --overwrite moves to {folder / ARCHIVE}/; "
                    "train on from it into another --output, or copy it out of this one first")
        return None
    if not (record or checkpoints) or not (checkpoints or _earlier_loras(folder, record)):
        return None  # no run there, or an earlier start died before its first checkpoint and LoRA
    if not config.output.overwrite:
        same = record is not None and same_run(record, ours)
        steps = f" with checkpoints up to step {checkpoints[-1][0]}" if checkpoints else ""
        what = ("an earlier run of these options" if same else "an earlier run" if record is None
                else f"another run ({differences(record['recipe'], ours)})")
        resume = "continue it with --resume auto, " if checkpoints else ""
        if named:  # its checkpoints would go on as this name's run
            what = f"the run named {named}" + ("" if same else f" ({differences(record['recipe'], ours)})")
            # (kohya_ss keeps every output_name in one output_dir: the run goes beside it, its LoRA copied there;
            # not below a folder a LoRA list reads, which would list the run's checkpoints too)
            listing = lora_list_folder(folder)  # (beside models/, not in it: models/vae is a name too)
            own = (listing.parent.parent / "lowvram-runs" if listing else folder.absolute().parent) / config.output_name
            if own == folder.absolute():  # (the folder is named as this run, another run's files in it)
                own = own.with_name(f"{config.output_name}_run")
            resume = (f"train {config.output_name} into a folder of its own, one run per folder (--output "
                      f"{shell_line(own)} --copy-to {shell_line(folder)} puts its LoRA here too), "
                      + (f"continue {named} with --name {shell_line(named)} --resume auto, " if checkpoints else ""))
        return (f"--output: {folder} holds {what}{steps}; {resume}"
                f"{_start_over(folder, archived(folder, record, config.output_name), 'its files')}"
                + ("" if named else ", or choose another --output"))
    if weights and Path(weights).resolve() in {path.resolve() for path in archived(folder, record, config.output_name)}:
        return (f"--network-weights: {weights} is the earlier run's LoRA, which --overwrite moves to "
                f"{folder / ARCHIVE}/; train on from it into another --output, or copy it out of this one first")
    return None


def _start_over(folder: Path, moved: list[Path], they: str) -> str:
    """How to start over in `folder`: --overwrite, which moves the earlier files to its archive/, but not where that
    is in a LoRA list (`_archived_in_a_lora_list`: --overwrite is refused there)."""
    if _archived_in_a_lora_list(folder, moved):
        return f"start over by moving {'them' if they == 'they' else they} out of this LoRA folder first"
    return f"start over with --overwrite ({they} move to {folder / ARCHIVE}/)"


def _archived_in_a_lora_list(folder: Path, moved: list[Path]) -> str | None:
    """The line --overwrite stops at where it would move LoRA files into an archive/ that ComfyUI and AUTOMATIC1111
    list (AUTOMATIC1111 names a LoRA by its file's name alone, and would load the archived one for the new one's)."""
    listing = lora_list_folder(folder)
    loras = [path for path in moved if path.suffix == LORA_SUFFIX]
    if not listing or not loras:
        return None
    where = f"{folder} is a LoRA folder" if listing == folder.absolute() else f"{folder} is in {listing}, a LoRA folder"
    return (f"--overwrite: {where} whose every .safetensors ComfyUI and AUTOMATIC1111 list: the earlier "
            f"{loras[0].name} would move to {folder / ARCHIVE}/ and be listed under the same name as the new one; move "
            f"the earlier files out first, or train into a folder elsewhere with --copy-to {listing}")


def _earlier_loras(folder: Path, record: dict | None) -> list[Path]:
    return list(folder.glob(f"{record.get('name', '') if record else ''}*.safetensors"))


def _unrecorded_saves(folder: Path, name: str) -> list[Path]:
    """The files of a folder no run is recorded in (a copy, another tool's LoRAs) under the names this run saves
    to (its final, step, epoch and best LoRAs, its diffusers copy): what it would write over."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if is_save_of(name, path) or path.name == diffusers_copy(name))


def take_ownership(run: ResolvedRun) -> str | None:
    """Check that the folder is this run's to write (`ownership_problem`), archive an earlier run's files under
    --overwrite, and record this run. Returns a line to tell the user, if any."""
    config, folder = run.config, run.config.output_dir
    removed = remove_leftovers(folder)
    problem = ownership_problem(run)
    if problem:
        raise LowvramError(problem)
    record = read_record(folder)
    checkpoints = checkpoint_folders.complete(checkpoint_folders.checkpoint_root(folder))
    note = None
    if config.training.resume:
        note = set_aside_later(checkpoints, config.training.resume, folder, config.output_name, recipe(run))
        if record and (moved := moved_paths(record.get("recipe") or {}, recipe(run))):  # (by name: said, to be seen)
            note = "; ".join(filter(None, [note, f"taken as moved: {'; '.join(moved)}"]))
    elif not (record or checkpoints) and (unrecorded := _unrecorded_saves(folder, config.output_name)):
        # under --overwrite: those files alone
        note = f"moved {len(unrecorded)} file(s) of no recorded run to {move_to_archive(folder, unrecorded)}"
    elif record or checkpoints:
        if not (checkpoints or _earlier_loras(folder, record)):
            same = record is not None and same_run(record, recipe(run))
            note = (f"starting over: the earlier run {'of these options ' if same else ''}in {folder} left no "
                    "checkpoint or LoRA")
        else:  # --overwrite, as ownership_problem let it through
            moved = archive(folder, record, config.output_name)
            note = f"moved the earlier run's files in {folder} to {moved}" if moved else None
    if removed:
        note = "; ".join(filter(None, [note, f"removed {len(removed)} temporary file(s) a killed run left in {folder}"]))
    if listing := lora_list_folder(folder):
        where = "" if listing == folder.absolute() else f"in {listing}, "
        note = "; ".join(filter(None, [note, (
            f"{folder} is {where}a LoRA folder whose every .safetensors ComfyUI and AUTOMATIC1111 list: this run's "
            f"{CHECKPOINTS}/ show in their lists too; train into a folder elsewhere with --copy-to {listing} to keep "
            "them out" + (f"; its LoRA takes the folder's name, {config.output_name}{LORA_SUFFIX} (--name gives it "
                          "another)" if listing == folder.absolute() and not config.output.name else ""))]))
    make_folders(folder)  # (in a lab's shared output folder, the group's to resume in)
    ours = recipe(run)
    fingerprint = model_fingerprint(config.model.model)  # (kept from the start: the model a resume must find)
    fingerprint = (record or {}).get("model_fingerprint", fingerprint) if config.training.resume else fingerprint
    write_text(folder / RECORD, json.dumps({"identity": identity(ours), "recipe": ours, "name": config.output_name,
                                            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                                           | ({"model_fingerprint": fingerprint} if fingerprint else {}),
                                           indent=1) + "\n")
    return note


# what differs between two writes of the same LoRA: when each was written, and so its file's hashes
WRITTEN_AT = ("ss_training_started_at", "ss_training_finished_at", "ss_session_id", "modelspec.date", *HASHES)


def written_already(lora: Path, metadata: dict[str, str], tensors: dict) -> bool:
    """Whether `lora` holds what a run that took no step (a finished run resumed) would write again: `tensors`,
    and `metadata` but for when it was written (an earlier lowvram's recipe, of fewer options, holds those it has
    as they are). Written again, its file hash (which model sites key on) and times would change for nothing.
    (--format, which writes a copy beside it, is no part of it.)"""
    try:
        old = read_header(lora)[0]
        tensors = {key: tensor.detach().contiguous().cpu() for key, tensor in tensors.items()}
        if addnet_hash(lora) != hashes(tensors, metadata)["sshs_model_hash"]:  # (of the tensor data alone)
            return False
    except (OSError, ValueError):  # none there, or not whole: written
        return False

    def lasting(values: dict[str, str]) -> dict:
        kept = {key: value for key, value in values.items() if key not in WRITTEN_AT}
        with contextlib.suppress(tomllib.TOMLDecodeError):
            recipe_of = tomllib.loads(kept.get(RECIPE_KEY, ""))
            kept[RECIPE_KEY] = {name: {key: value for key, value in section.items() if key != "format"}
                                      for name, section in recipe_of.items() if isinstance(section, dict)}
        return kept

    then, now = lasting(old), lasting(metadata)
    recipes = then.pop(RECIPE_KEY, None), now.pop(RECIPE_KEY, None)
    return then == now and _within(*recipes)


def _within(old: object, new: object) -> bool:
    """Whether a recipe's sections `old` hold only options `new` holds, of the same values: what a lowvram of fewer
    options wrote, as this one would write it."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old == new
    return all(name in new and all(key in new[name] and new[name][key] == value for key, value in section.items())
               for name, section in old.items())


def keep_earlier_final_lora(lora: Path, step: int, trained: bool, save_name: Callable[[str, int], str] = step_save
                            ) -> str | None:
    """Before a resumed run writes its final LoRA: the earlier one (a finished run trained further, or the end of
    the branch a run resumed from an earlier checkpoint leaves) kept as the save point of its step (`save_name`:
    an epoch's name where the run saves by epochs and it ended one), as the run would have left it had it gone on.
    Where this run took no step (a finished or early-stopped run resumed) and it is of the same step, it is the same
    file, written again."""
    if not lora.exists():
        return None
    try:
        steps = read_header(lora)[0].get("ss_steps", "")
    except (OSError, ValueError) as exc:  # (cut short: a power cut, a copy stopped) not lost, nor the steps just taken
        kept = move_to_archive(lora.parent, [lora, *samples_of(lora)]) / lora.name
        return f"moved the run's earlier final LoRA, unreadable ({exc}), to {kept}"
    if not trained and steps == str(step):
        return None
    kept = lora.with_name(save_name(lora.stem, int(steps)) + LORA_SUFFIX) if steps.isdigit() else None
    samples = samples_of(lora)
    if kept is None or kept.exists():
        kept = move_to_archive(lora.parent, [lora, *samples]) / lora.name
    else:
        lora.rename(kept)
        for sample in samples:  # its samples as the LoRA: <name>-NN.png -> <name>-stepN-NN.png
            sample.rename(sample.with_name(f"{kept.stem}{sample.name[len(lora.stem):]}"))
    return f"kept the run's earlier final LoRA as {kept}" + (" with its samples" if samples else "")


def _samples(folder: Path) -> list[Path]:
    return sorted((folder / SAMPLES).glob("*.png")) if (folder / SAMPLES).is_dir() else []


def samples_of(lora: Path) -> list[Path]:
    """The final samples of a LoRA (<name>-NN.png), kept beside it under its name when it became a save point."""
    return [path for path in _samples(lora.parent) if final_samples_of(lora.stem).fullmatch(path.name)]


def set_aside_later(checkpoints: list[tuple[int, Path]], resume: str, folder: Path, name: str, run_recipe: dict,
                    end_decided: bool = False) -> str | None:
    """Resuming from a checkpoint of this folder branches off there: what the branch left wrote after it (its later
    checkpoints, where an earlier one is chosen; its LoRA saves, final and best LoRA, and samples, a killed run's
    past its last checkpoint too) moves to archive/, so that --resume auto and the pruning of old checkpoints follow
    the new branch, and no save of the branch left passes for the new one's (a -best of a step the new branch never
    saw, as its best). Where --resume auto finds the run's final LoRA past the checkpoint (its end's lost), the run
    decides first (`end_decided`): whether anything is left to train."""
    if not checkpoints:
        return None
    # (auto: the newest readable, which the run resumes from; newer ones, unreadable, are of the branch left too:
    # kept, they took the place of readable ones as checkpoints were pruned)
    chosen, unreadable = Path(resume), []
    if resume == "auto":
        try:
            chosen, unreadable = checkpoint_folders.resolve(resume, folder, run_recipe)
        except LowvramError:
            return None  # (the run says why)
        if not end_decided and (_saved_step(folder / final_lora(name), name) or 0) > int(chosen.name[5:]):
            return None
    chosen = chosen.resolve()
    steps = [step for step, path in checkpoints if path.resolve() == chosen]
    if not steps:  # (another folder's checkpoint: this one's saves are not its branch)
        return None
    later = [path for step, path in checkpoints if step > steps[0]]
    saves = [path for path in [*folder.glob("*.safetensors"), *_samples(folder)]
             if (_saved_step(path, name) or 0) > steps[0]]
    if folder / final_lora(name) in saves:  # its final samples with it
        saves += samples_of(folder / final_lora(name))
    if not later and not saves:
        return None
    target = move_to_archive(folder, later + saves)
    for record in (folder / METRICS, folder / f"{name}.toml"):  # its loss curve and options, to compare the branches
        if record.is_file():  # (copied: the new branch keeps the steps up to where it leaves, and rewrites the rest)
            shutil.copy2(record, target / record.name)
    moved = (f"{len(later)} checkpoint(s) after {chosen.name}" + (f" and {len(saves)} save(s) and sample(s)"
             if saves else "")) if later else f"{len(saves)} save(s) and sample(s) after {chosen.name}"
    broken = (f"[yellow]warning: {'; '.join(unreadable)}: resuming from an earlier one[/]; "
              if unreadable and not end_decided else "")  # (decided in the run, whose resume said them)
    return f"{broken}moved {moved}, of the branch this run leaves, to {target}"


def _saved_step(path: Path, name: str) -> int | None:
    """The step of a save point of run `name` (its final, best, -stepN or -eN LoRA, by its metadata; a sample grid
    <name>-stepN.png or a kept final sample <name>-stepN-NN.png, by its name); None for anything else."""
    if is_save_of(name, path):
        try:
            steps = read_header(path)[0].get("ss_steps", "")
        except (OSError, ValueError):
            return None
        return int(steps) if steps.isdigit() else None
    found = step_image(name).fullmatch(path.name)
    return int(found.group(1)) if found else None


def remove_leftovers(folder: Path) -> list[Path]:
    """What writes killed midway left in the output folder: temporary files (named as only `atomic_write` names
    them) and half-written checkpoint folders. Safe while this run holds the folder's lock: nobody else writes."""
    if not folder.is_dir():
        return []
    removed = remove_orphans(folder) + remove_orphans(folder / SAMPLES)
    root = checkpoint_folders.checkpoint_root(folder)
    for partial in root.glob(".step-*") if root.is_dir() else ():
        if HALF_WRITTEN_CHECKPOINT.match(partial.name) and partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
    return removed


def out_of_room(run: ResolvedRun, exc: DiskFull, processes: int = 1) -> LowvramError:
    """The one line a full disk ends a run with: what ran out, what was kept, and how to go on."""
    folder, name = run.config.output_dir, run.config.output_name
    newest = checkpoint_folders.latest(checkpoint_folders.checkpoint_root(folder), recipe(run))
    loras = sorted(folder.glob(f"{name}*.safetensors"), key=lambda p: p.stat().st_mtime)
    kept = [f"checkpoint {newest.name}" if newest else "no checkpoint yet"] + [f"LoRA {p.name}" for p in loras[-1:]]
    held = sum(path.stat().st_size for path in (folder / ARCHIVE).rglob("*") if path.is_file()) \
        if (folder / ARCHIVE).is_dir() else 0
    if held:  # what a user short of room looks for first: what can go
        kept.append(f"{human_size(held)} of earlier runs' and branches' files in {folder / ARCHIVE}/, which can go")
    if newest:
        then = "continue with: " + continue_line(folder, name, processes)
    elif (folder / final_lora(name)).exists():  # the LoRA the user trained for is whole: it is the way on
        then = train_on_from(folder / final_lora(name))
    elif _earlier_loras(folder, read_record(folder)):  # a new start refuses these saves without --overwrite
        then = f"start over with the same command and --overwrite (the saves so far move to {folder / ARCHIVE}/)"
    else:
        then = "run the same command again"
    return LowvramError(f"{exc.reason}; kept: {', '.join(kept)}; {exc.remedy}, then {then}")


def archived(folder: Path, record: dict | None, name: str) -> list[Path]:
    """What an earlier run wrote in `folder`: the shared files, and its LoRA, step, epoch and best saves, and its
    options, under its name or this run's; no one else's."""
    names = {name, *([record["name"]] if record and record.get("name") else [])}
    ours = [folder / entry for entry in (*SHARED, RECORD) if (folder / entry).exists()]
    for run_name in names:
        ours += [path for path in folder.iterdir() if (path.name in (f"{run_name}.toml", f"{run_name}.run.toml")
                                                       and is_options_file(path))
                 or is_save_of(run_name, path) or path.name == diffusers_copy(run_name)]
    return list(dict.fromkeys(ours))


def archive(folder: Path, record: dict | None, name: str) -> Path | None:
    """Move what an earlier run wrote in `folder` into `folder/archive/<time>/`; nothing else is touched."""
    ours = archived(folder, record, name)
    return move_to_archive(folder, ours) if ours else None


def move_to_archive(folder: Path, paths: list[Path]) -> Path:
    """Move `paths` (files or folders) into `folder/archive/<time>/`; that folder."""
    target = folder / ARCHIVE / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "-1")
    make_folders(target)
    for path in paths:
        shutil.move(str(path), str(target / path.name))
    return target
