"""A kohya sd-scripts launcher script (the .bat, .ps1 or .sh that runs `accelerate launch train_network.py --flags`)
read as the config its flags make: each `--flag value` is the key of kohya's TOML config of that name, so that
`lowvram train --config train.bat` trains what the script would, through the same translation as a kohya config.
Plain text work, no torch."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from lowvram.errors import LowvramError

LAUNCHER_SUFFIXES = (".bat", ".cmd", ".ps1", ".sh")
LORA_SCRIPTS = ("sdxl_train_network.py", "train_network.py")
# kohya's other training scripts: what each trains, which lowvram does not
OTHER_SCRIPTS = {"train_db.py": "a DreamBooth fine-tune", "sdxl_train.py": "a full SDXL fine-tune",
                 "fine_tune.py": "a full fine-tune", "train_textual_inversion.py": "a textual inversion",
                 "sdxl_train_textual_inversion.py": "a textual inversion", "flux_train_network.py": "a FLUX LoRA",
                 "sd3_train_network.py": "an SD3 LoRA", "lumina_train_network.py": "a Lumina LoRA",
                 "train_control_net.py": "a ControlNet", "sdxl_train_control_net.py": "a ControlNet"}
# the line continuations of cmd (^), PowerShell (`) and sh (\), and the shell's own words that end the command
CONTINUATION = re.compile(r"[\^`\\][ \t]*\r?\n")
SHELL_ENDS = {"|", "||", "&", "&&", ";", ">", ">>", "2>&1", "2>", "1>"}
# kohya's flags whose value is text even where it reads as a number (an output named 2024)
TEXT_KEYS = {"output_name", "training_comment", "metadata_title", "metadata_author", "metadata_description",
             "metadata_tags", "class_tokens", "caption_extension", "resolution", "wandb_run_name", "log_prefix"}


def is_launcher(path: Path) -> bool:
    return Path(path).suffix.lower() in LAUNCHER_SUFFIXES


def launcher_config(text: str, path: Path) -> dict[str, Any]:
    """The kohya config a launcher script's training command amounts to: its flags as the keys of kohya's TOML
    config (a flag alone is true; several values are a list), over the TOML its --config_file names, as kohya
    reads them. A LowvramError names a script that runs no LoRA training."""
    words = _training_command(text, path)
    doc: dict[str, Any] = {}
    key = None
    for word in words:
        if word in SHELL_ENDS:
            break
        if word.startswith("--"):
            key, _, value = word[2:].partition("=")
            doc[key] = _typed(key, value) if "=" in word else True
            key = None if "=" in word else key
        elif key is not None:  # a value of the flag before it
            value = _typed(key, word)
            doc[key] = value if doc[key] is True else [*(doc[key] if isinstance(doc[key], list) else [doc[key]]),
                                                       value]
    return doc


def _training_command(text: str, path: Path) -> list[str]:
    """The words after the training script's name on the line that runs it."""
    joined = CONTINUATION.sub(" ", text)
    for line in joined.splitlines():
        if line.lstrip().startswith(("#", "REM ", "rem ", "::")):
            continue
        for script in LORA_SCRIPTS:
            found = re.search(rf"(^|[\s\"'/\\]){re.escape(script)}[\"']?(\s|$)", line)
            if found:
                rest = line[found.end():]
                return shlex.split(rest) if path.suffix.lower() == ".sh" else _windows_words(rest)
        for script, what in OTHER_SCRIPTS.items():
            if re.search(rf"(^|[\s\"'/\\]){re.escape(script)}", line):
                raise LowvramError(f"--config: {path} runs kohya's {script}, {what}; lowvram trains LoRAs of SD1.5 "
                                   "and SDXL (kohya's train_network.py and sdxl_train_network.py)")
    raise LowvramError(f"--config: {path} runs no kohya training script (train_network.py or "
                       "sdxl_train_network.py); give the launcher that does, or a kohya .toml config")


def _typed(key: str, value: str) -> Any:
    """A flag's value as kohya's argparse types it, and so as a TOML config holds it: a number where it reads as
    one (0 switches a setting off), else the text (a name stays text, whatever it reads as)."""
    if key in TEXT_KEYS:
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _windows_words(line: str) -> list[str]:
    """A cmd or PowerShell line's words as the program gets them: quotes group (--output_name="my cat" is one
    word) and go; a backslash is a path's, not an escape."""
    words = re.findall(r"""(?:[^\s"']+|"[^"]*"|'[^']*')+""", line)
    return [re.sub(r""""([^"]*)"|'([^']*)'""", lambda quoted: quoted.group(1) or quoted.group(2) or "", word)
            for word in words]
