"""The names of the files a run writes after its LoRA's name, declared once: the code that writes them and the code
that finds, prunes, keeps and archives them read these. Plain text, no torch."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lowvram.errors import shell_line

LORA_SUFFIX = ".safetensors"
# the folders and files every run keeps under these names
METRICS = "metrics.jsonl"  # each step's figures, one JSON object per line
CHECKPOINTS = "checkpoints"  # what --resume continues from
SAMPLES = "samples"  # sample grids and the final samples
LOGS = "logs"  # TensorBoard's and W&B's files
RECORD = "lowvram-run.json"  # which run the folder holds: its identity, recipe and name
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # the weights file diffusers' save_lora_weights writes
OPTIONS_HEADER = "# the options of a lowvram run, as `lowvram train --config` reads them (written by the run)\n"


def runs_name(folder: Path) -> str | None:
    """The name of the run an output folder records (its LoRA is <name>.safetensors there, its options <name>.toml),
    None for a folder of no run."""
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def run_dataset(folder: Path) -> str:
    """The words " (its run trained on DIR)" from an output folder's record; "" where it names none."""
    try:
        data = json.loads((folder / RECORD).read_text(encoding="utf-8"))["recipe"]["--data"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f" (its run trained on {shell_line(data)})" if isinstance(data, str) and data else ""


def lora_in_folder(path: Path) -> str:
    """What to give instead of a folder where a LoRA file goes: a diffusers LoRA folder's weights file, by its path,
    else a .safetensors file in it (the newest named first)."""
    inside = path / DIFFUSERS_WEIGHTS
    if inside.is_file():
        return f"give its {inside}"
    if (path / "state.json").is_file() and path.parent.name == CHECKPOINTS:  # (its files are the run's state, no LoRA:
        # they were offered as LoRA files)
        return (f"it is a checkpoint of the run in {path.parent.parent} (train --resume continues it); give a LoRA "
                ".safetensors file of the run")
    held = sorted(path.glob(f"*{LORA_SUFFIX}"), key=lambda file: -file.stat().st_mtime) if path.is_dir() else []
    names = ", ".join(file.name for file in held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
    return "give a LoRA .safetensors file" + (f" in it ({names})" if held else "")


def not_written_yet(lora: Path) -> str:
    """Where `lora`, not there, is the final LoRA of a run in its folder that has not ended (a Colab runtime that
    disconnected): that, and how to continue it; "" otherwise."""
    name = runs_name(lora.parent)
    if name is None or lora.name != final_lora(name):
        return ""
    steps = [step for step, _ in written_checkpoints(lora.parent / CHECKPOINTS)]
    newest = f" (its newest checkpoint is step {max(steps)})" if steps else ""
    options = options_path(lora.parent, name)  # (written once the dataset is read: a run stopped before has none;
    # a <name>.toml of the user's own is no run's options)
    if not is_options_file(options):
        return f"; the run in {lora.parent} stopped before it trained: start it again as it was started"
    return (f"; the run in {lora.parent} has not written it yet{newest}: "
            f"{shell_line('lowvram', 'train', '--config', options, '--resume', 'auto')} continues it")


def options_path(folder: Path, name: str) -> Path:
    """Where the run's options are written, and what its 'continue with' line names: `<name>.toml`, unless a file
    there is not one lowvram wrote (the user's own config, kept; or an older lowvram's, from before the header),
    then `<name>.run.toml` beside it."""
    path = folder / f"{name}.toml"
    return path if not path.is_file() or is_options_file(path) else folder / f"{name}.run.toml"


def is_options_file(path: Path) -> bool:
    """Whether `path` is a run's options file lowvram wrote (its header on its first line), not a user's config."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline() == OPTIONS_HEADER
    except OSError:
        return False


LORA_LISTS = ("loras", "lora", "lycoris")  # ComfyUI's models/loras, AUTOMATIC1111's models/Lora and models/LyCORIS


def listed_lora(name: Path) -> str:
    """" (did you mean models/Lora/mystyle.safetensors?)" for a LoRA named alone, as AUTOMATIC1111's <lora:mystyle>
    names it, that a LoRA list folder under the current one holds (its models/Lora, ComfyUI's models/loras); ""
    otherwise."""
    if len(name.parts) != 1 or not Path("models").is_dir():
        return ""
    file = name.name if name.suffix.lower() == ".safetensors" else f"{name.name}.safetensors"
    found = [match for folder in sorted(Path("models").iterdir()) if folder.name.lower() in LORA_LISTS
             for match in sorted(folder.rglob(file)) if match.is_file()]  # (its subfolders too: AUTOMATIC1111 lists
    return f" (did you mean {found[0]}?)" if found else ""  # models/Lora/chars/alice.safetensors as alice)


def lora_list_folder(folder: Path) -> Path | None:
    """The LoRA folder of ComfyUI (models/loras) or AUTOMATIC1111 (models/Lora, models/LyCORIS) that `folder` is
    in, if any: they list every .safetensors below it."""
    folder = folder.absolute()
    return next((parent for parent in (folder, *folder.parents) if parent.name.lower() in LORA_LISTS
                 and parent.parent.name.lower() == "models"), None)


def final_lora(name: str) -> str:
    """The run's LoRA, written at its end: <name>.safetensors."""
    return name + LORA_SUFFIX


def copy_destination(copy_to: str, name: str) -> Path:
    """Where --copy-to writes the final LoRA: the file it names, or <name>.safetensors in the folder it names (one
    there, or a path without an extension)."""
    path = Path(copy_to).expanduser()
    folder = path.is_dir() or copy_to.endswith(("/", "\\")) or not path.suffix
    return path / final_lora(name) if folder else path



def checkpoint_name(step: int) -> str:
    """A checkpoint's folder in <output>/checkpoints."""
    return f"step-{step:06d}"


def written_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint in `root` whose state was written (its last part: a folder without it is
    a write cut short), oldest first by step number (never by name: a name sorts wrongly past step 999999)."""
    return sorted((int(path.name[5:]), path) for path in root.glob("step-*")
                  if re.fullmatch(r"[0-9]+", path.name[5:]) and (path / "state.json").is_file())


def checkpoint_named(output_dir: Path, name: str) -> Path | None:
    """The output folder's checkpoint that `--resume step-000020` (or `20`, or `step-20`) names, as lowvram prints
    them; None where it has none of that step."""
    wanted = name.strip("/\\").removeprefix("step-")
    found = [path for step, path in written_checkpoints(output_dir / CHECKPOINTS) if re.fullmatch(r"[0-9]+", wanted)
             and step == int(wanted)]
    return found[0] if found else None


def step_save(name: str, step: int) -> str:
    """A LoRA saved at a step (--save-every N, an interrupted run's), and that step's sample grid, named as kohya
    names a step's save (its STEP_FILE_NAME): <name>-step00000500."""
    return f"{name}-step{step:08d}"


def epoch_save(name: str, epochs: int) -> str:
    """A LoRA saved after some epochs (--save-every Ne), named as kohya names an epoch's save (its EPOCH_FILE_NAME),
    which upload scripts and <lora:name-000002> prompts go by: <name>-000002."""
    return f"{name}-{epochs:06d}"


def best_save(name: str) -> str:
    """The LoRA of the best validation loss: <name>-best."""
    return f"{name}-best"


def diffusers_copy(name: str) -> str:
    """The folder of the final LoRA in diffusers' format (--format diffusers): <name>-diffusers."""
    return f"{name}-diffusers"


def final_sample(name: str, index: int) -> str:
    """The final LoRA's sample of the index-th prompt: <name>-00.png."""
    return f"{name}-{index:02d}.png"


def saved_lora(name: str) -> re.Pattern:
    """Any LoRA the run `name` saves: the final one, a step's, an epoch's (as -e0002 too, before lowvram took
    kohya's names), the best."""
    return re.compile(rf"{re.escape(name)}(-(step\d+|e\d+|\d{{6}}|best))?{re.escape(LORA_SUFFIX)}")


def interval_count(name: str, filename: str, unit: str) -> int | None:
    """The step or epoch count of a --save-every LoRA of one kind ("steps" or "epochs": kohya's -000002, an earlier
    lowvram's -e0002), by `saved_lora`'s names; None for any other file."""
    found = saved_lora(name).fullmatch(filename)
    suffix = (found.group(2) or "") if found else ""
    number = (suffix.removeprefix("step") if suffix.startswith("step") else "") if unit == "steps" \
        else suffix.removeprefix("e")
    return int(number) if number.isdigit() else None


def step_image(name: str) -> re.Pattern:
    """A step's sample grid, or a final sample kept with the LoRA that became that step's save: the step in group 1."""
    return re.compile(rf"{re.escape(name)}-step(\d+)(-\d+)?\.png")


def final_samples_of(stem: str) -> re.Pattern:
    """The final samples of the LoRA file named `stem`."""
    return re.compile(rf"{re.escape(stem)}-\d+\.png")


# the longest file name a run adds to its LoRA's name: a step's save past a million steps
LONGEST_SUFFIX = step_save("", 1_000_000) + LORA_SUFFIX
