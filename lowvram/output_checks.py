"""The checks of what a run writes: its output folder and LoRA's name (every file system's limits, Windows' too),
--copy-to, its saves, samples and logs; said within a second, before any model loads (`config_checks`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lowvram.config import RunConfig
from lowvram.dataset_files import is_dataset_file, read_dataset
from lowvram.dataset_files.subsets import image_folder_holding
from lowvram.errors import PICKLE_SUFFIXES, LowvramError, shell_line
from lowvram.files import (
    MAX_FILE_NAME,
    NAME_UNITS,
    TEMPORARY_NAME_EXTRA,
    WINDOWS_DEVICES,
    cache_variable,
    escaped,
    file_in_the_way,
    name_length,
    new_folder_problem,
    not_utf8,
    refused_in_name,
    unwritable,
    windows_output_problem,
)
from lowvram.option_values import parse_save_every, positive
from lowvram.prompts import NEGATIVE_LINE, lora_tags, parse_prompt, unread_syntax, without_lora_tags
from lowvram.run_files import LONGEST_SUFFIX, LORA_LISTS, LORA_SUFFIX, copy_destination, final_lora, lora_list_folder
from lowvram.samplers import sampler_problem

# the longest file a run names after its LoRA, written through a temporary name first, within a file name's bytes
MAX_NAME_BYTES = MAX_FILE_NAME - len(LONGEST_SUFFIX) - TEMPORARY_NAME_EXTRA


def _copy_problems(c: RunConfig) -> list[str]:
    """--copy-to names a .safetensors file or a folder to write in, outside the run's own LoRA."""
    copy = copy_destination(c.output.copy_to, c.output_name)
    if copy.suffix.lower() != LORA_SUFFIX:
        return [f"--copy-to: {c.output.copy_to} is no .safetensors file; name one, or a folder to copy the LoRA into"]
    if copy.absolute() == (c.output_dir / final_lora(c.output_name)).absolute():
        return [f"--copy-to: {copy} is the run's own LoRA; name a file or folder outside --output"]
    if not copy.parent.exists() and (same := _same_but_case(copy.parent)):  # (models/lora beside models/Lora: made,
        # and the LoRA never in AUTOMATIC1111's list; project2 beside project1 is a new folder)
        return [f"--copy-to: {copy.parent} does not exist, but {same} does; give that folder, or make it first"]
    blocked = unwritable(copy.parent)
    return [f"--copy-to: {blocked}"] if blocked else []


def _same_but_case(folder: Path) -> Path | None:
    """The folder beside `folder` whose name is its own but for case, - and _ (Lora for lora), if any; in a models/
    folder, any LoRA list's (loras for Lora: ComfyUI's, where AUTOMATIC1111's was typed)."""
    def plain(name: str) -> str:
        lora_list = folder.parent.name.lower() == "models" and name.lower() in LORA_LISTS
        return "loras" if lora_list else name.lower().replace("-", "").replace("_", "")

    try:
        return next((entry for entry in folder.parent.iterdir() if entry.is_dir() and plain(entry.name) ==
                     plain(folder.name)), None)
    except OSError:
        return None


def _output_among_images(c: RunConfig) -> list[str]:
    """An --output that is the dataset's folder or one of its N_name image folders (or inside one), as a cache
    there is refused: lowvram never writes among the images."""
    if not c.data.data or not (Path(c.data.data).is_dir() or is_dataset_file(c.data.data)):
        return []
    data, out = Path(c.data.data).resolve(), c.output_dir.resolve()
    if is_dataset_file(c.data.data):  # (a kohya or OneTrainer file's image folders)
        try:
            folders = [Path(subset.folder).resolve() for subset in read_dataset(data).subsets]
        except LowvramError:  # (said where the file is read)
            return []
        images = next((folder for folder in folders if out.is_relative_to(folder)), None)
    else:  # (a project's output beside its images is no image folder's)
        images = image_folder_holding(data, out)
    if images is None:
        return []
    where = "is the dataset's image folder," if images == out else f"is inside the dataset's image folder {images},"
    return [(f"--output: {c.output_dir} {where} which lowvram never writes to (the run's LoRA, samples and "
            "checkpoints would lie among the images); choose an --output outside it")]


def cache_problems(c: RunConfig) -> list[str]:
    """The cache's folder, --cache-dir's or the environment's (which check-data writes its image facts in too): one
    Windows could not open would be made as a folder of that whole name here."""
    flag, folder = ("--cache-dir", c.data.cache_dir) if c.data.cache_dir else (cache_variable() or (None, None))
    if folder and (windows := windows_output_problem(flag, folder) or new_folder_problem(flag, Path(folder))):
        return [windows]
    blocking = c.data.cache_dir and file_in_the_way(Path(c.data.cache_dir))
    if blocking:  # (found before caching: every cache write, its lock first, would fail one by one)
        return [(f"--cache-dir: {blocking} is a file, not a folder; give a folder, or leave --cache-dir out for "
                "lowvram's own")]
    return []


def output_problems(c: RunConfig) -> list[str]:
    """What the run writes: its folder and name, its saves, samples and logs."""
    p: list[str] = []
    output = Path(c.output.output)
    if output.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) and not output.is_dir():  # OneTrainer's: a file
        listing = lora_list_folder(output.parent)  # (there, the run's checkpoints would show in the UI's list too)
        p.append(f"--output: {output} names a file; --output is the run's folder and --name its LoRA's name: "
                 + ("train into a folder elsewhere with " + shell_line(
                     "--output", listing.parent.parent / "lowvram-runs" / output.stem, "--copy-to",
                     output.with_suffix(LORA_SUFFIX)) + ", which writes "
                    f"the LoRA there (the run's checkpoints would show in {listing}'s list)" if listing else
                    shell_line("--output", output.parent, "--name", output.stem)))
    if c.output.name and Path(c.output.name).suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        p.append(f"--name: {c.output.name}: give it without the extension (the LoRA is <name>.safetensors): "
                 + shell_line("--name", Path(c.output.name).stem))
    for flag, folder in (("--output", c.output.output), ("--copy-to", c.output.copy_to)):
        if folder and (windows := windows_output_problem(flag, folder) or new_folder_problem(flag, Path(folder))):
            p.append(windows)
    if c.output.copy_to and not windows_output_problem("--copy-to", c.output.copy_to):
        p += _copy_problems(c)
    p += _output_among_images(c)
    positive(p, "sample-steps", c.output.sample_steps)
    for flag, value in (("save-every", c.output.save_every), ("sample-every", c.output.sample_every)):
        try:
            parse_save_every(value)
        except ValueError as exc:
            p.append(f"--{flag}: {exc}")
    samplers = {c.output.sample_sampler} if c.output.sample_sampler else set()
    lines, flag = c.output.sample_prompts, "--sample-prompt"
    try:
        lines = c.prompt_lines
    except FileNotFoundError:
        p.append(f"--sample-prompt-file: {c.output.sample_prompt_file} not found; check the path")
    except IsADirectoryError:
        p.append(f"--sample-prompt-file: {c.output.sample_prompt_file} is a folder; give the prompt file in it")
    except UnicodeDecodeError as exc:
        p.append(f"--sample-prompt-file: {not_utf8(c.output.sample_prompt_file, exc)}")
    except OSError as exc:
        p.append(f"--sample-prompt-file: {c.output.sample_prompt_file} is unreadable ({exc.strerror or exc})")
    except ValueError as exc:
        p.append(f"--sample-prompt-file: {c.output.sample_prompt_file}: {exc}")
    else:
        if c.output.sample_prompt_file and len(lines) == len(c.output.sample_prompts):
            p.append(f"--sample-prompt-file: {c.output.sample_prompt_file} holds no prompt (an enabled one, not a "
                     "# comment); add one, or drop --sample-prompt-file")
    for i, line in enumerate(lines):
        where = flag if i < len(c.output.sample_prompts) else "--sample-prompt-file"
        if NEGATIVE_LINE.match(line):  # (a --sample-prompt of it: drawn as a prompt of those words)
            p.append(f"{where}: '{line}' is a negative prompt alone; give it after its prompt: 'PROMPT --n NEGATIVE'")
            continue
        if lora_tags(line) and without_lora_tags(line) == line:
            p.append(f"{where}: '{line}' holds AUTOMATIC1111's LoRA tags alone, which a sample leaves out (every sample "
                     "is drawn with the LoRA being trained); write the words to draw")
            continue
        try:
            prompt = parse_prompt(line)
        except ValueError as exc:
            p.append(f"{where}: {exc}")
            continue
        samplers.add(prompt.sampler)
        # (drawn as words, then refused by generate reading the sample's own infotext; a LoRA tag is left out:
        # prompt_lines)
        p += [f"{where}: {problem}" for problem in unread_syntax(prompt)]
        if prompt.seed == -1:
            p.append(f"{where}: --d -1 in '{line}': a training sample keeps its seed, so that the grids of successive "
                     "steps compare; give a seed, or leave --d out for the run's")
    for name in sorted(samplers - {None}):
        problem = sampler_problem(name, c.model.zero_terminal_snr)
        if problem:
            p.append(f"--sample-sampler: {problem}")
    positive(p, "keep-saves", c.output.keep_saves)
    if c.output.keep_saves and not c.output.save_every:
        p.append("--keep-saves: only used with --save-every; add it or drop --keep-saves")
    for flag, value in (("--sample-every", c.output.sample_every), ("--sample-at-first", c.output.sample_at_first)):
        if value and not (c.output.sample_prompts or c.output.sample_prompt_file):
            p.append(f"{flag}: no prompt to render; add --sample-prompt \"...\"")
    p += _wandb_problems(c.output.wandb_project, c.output.wandb_run_name)
    if c.output.tensorboard and importlib.util.find_spec("tensorboard") is None:  # known now, not after the caching
        p.append("--tensorboard: TensorBoard is not installed; pip install 'lowvram[tensorboard]', or train without "
                 "it (--no-tensorboard)")
    if c.output.format == "diffusers" and c.network.network in ("loha", "lokr"):
        p.append(f"--format diffusers: diffusers cannot load {c.network.network} adapters; keep --format kohya "
                 "(ComfyUI and AUTOMATIC1111 load it), or use --network lora or dora")
    name = c.output_name
    refused = refused_in_name(name)
    # given or from the --output folder: say which, since a user who never passed --name cannot see it
    shown = escaped(name if len(name) <= 60 else f"{name[:40]}…")
    if c.output.name:
        flag, whose, fix = "--name", f"'{shown}'", "pass another --name"
    else:
        flag, whose = "--output", f"the LoRA's name, the folder's '{shown}',"
        fix = "pass --name NAME, or name the folder another way"
    if not c.output.name and windows_output_problem("--output", c.output.output):
        pass  # (said above: the folder is another machine's, and with it goes its name)
    elif not name or refused:
        # / separates folders everywhere; the rest only Windows refuses
        clauses = [f"{chars} cannot be in one{where}" for chars, where in
                   (("/" if "/" in refused else "", ""), (refused.replace("/", ""), " on Windows")) if chars]
        why = f" ({'; '.join(clauses)})" if clauses else ""
        p.append(f"{flag}: {whose} is not a valid file name{why}; {fix}")
    elif WINDOWS_DEVICES.fullmatch(name):
        p.append(f"{flag}: {whose} is a name Windows keeps for a device (CON, PRN, AUX, NUL, COM1-9, LPT1-9): "
                 f"a LoRA of it cannot be saved or downloaded there; {fix}")
    elif name_length(name) > MAX_NAME_BYTES:
        p.append(f"{flag}: {whose} is {name_length(name)} {NAME_UNITS} long; the run's files add up to "
                 f"{MAX_FILE_NAME - MAX_NAME_BYTES} to it ({LONGEST_SUFFIX}, a temporary suffix), and a file name "
                 f"holds {MAX_FILE_NAME}, so it can be at most {MAX_NAME_BYTES}; {fix}")
    return p


def _wandb_problems(project: str | None, run_name: str | None) -> list[str]:
    """What W&B would refuse only once the model has loaded: a project name it does not take, a missing package."""
    if project is None and run_name:
        return ["--wandb-run-name: names a run of a W&B project; add --wandb-project NAME, or drop it"]
    if project is None:
        return []
    # W&B's own rule (wandb.Settings' project check), kept here so that a wrong name costs no model load
    refused = "".join(dict.fromkeys(ch for ch in project if ch in '/\\#?%:'))
    if not project.strip() or refused or len(project) > 128:
        why = f" ({refused} cannot be in one)" if refused else " (1 to 128 characters)"
        return [f"--wandb-project: '{project}' is not a W&B project name{why}; pass another"]
    if importlib.util.find_spec("wandb") is None:
        return ["--wandb-project: Weights & Biases is not installed; pip install 'lowvram[wandb]', or drop it"]
    return []
