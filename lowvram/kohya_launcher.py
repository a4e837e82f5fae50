"""A kohya sd-scripts launcher script (the .bat, .ps1 or .sh that runs `accelerate launch train_network.py --flags`)
read as the config its flags make: each `--flag value` is the key of kohya's TOML config of that name, so that
`lowvram train --config train.bat` trains what the script would, through the same translation as a kohya config.
The script's own variables (`set MODEL=...`, `MODEL=...`, `$MODEL = "..."`) are filled in. Plain text work, no
torch."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from lowvram.errors import LowvramError
from lowvram.kohya_config import number_or_text

LAUNCHER_SUFFIXES = (".bat", ".cmd", ".ps1", ".sh")
LORA_SCRIPTS = ("sdxl_train_network.py", "train_network.py")
# kohya's other training scripts: what each trains, which lowvram does not
OTHER_SCRIPTS = {"train_db.py": "a DreamBooth fine-tune", "sdxl_train.py": "a full SDXL fine-tune",
                 "fine_tune.py": "a full fine-tune", "train_textual_inversion.py": "a textual inversion",
                 "sdxl_train_textual_inversion.py": "a textual inversion", "flux_train_network.py": "a FLUX LoRA",
                 "sd3_train_network.py": "an SD3 LoRA", "lumina_train_network.py": "a Lumina LoRA",
                 "train_control_net.py": "a ControlNet", "sdxl_train_control_net.py": "a ControlNet"}
# a line's continuation on the next: cmd's ^, PowerShell's `, sh's \ (each at the line's end)
CONTINUATION = {".bat": "^", ".cmd": "^", ".ps1": "`", ".sh": "\\"}
# a whole line of comment, or of printing: cmd's REM and ::, PowerShell's and sh's #
COMMENT = re.compile(r"\s*(@?rem(\s|$)|::|#|@?echo(\s|$)|write-host\s|printf\s)", re.IGNORECASE)
# the shell's own words that end the command (a pipe, a redirection, the next command), alone or attached
SHELL_END = re.compile(r"^(\|\|?|&&?|;|\d?>>?)")
# kohya's flags whose value is text even where it reads as a number (an output named 2024)
TEXT_KEYS = {"output_name", "training_comment", "metadata_title", "metadata_author", "metadata_description",
             "metadata_tags", "class_tokens", "caption_extension", "resolution", "wandb_run_name", "log_prefix"}
# a variable of the script: cmd's %NAME%, sh's $NAME, ${NAME} and ${NAME:-default}, PowerShell's $NAME and
# $env:NAME (group 1 its name, group 2 a default)
VARIABLE = {".bat": r"%(\w+)%()", ".cmd": r"%(\w+)%()", ".sh": r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)()",
            ".ps1": r"\$(?:env:)?(\w+)()"}
ASSIGNMENT = {".bat": r"\s*@?set\s+\"?(\w+)=(.*?)\"?\s*$", ".cmd": r"\s*@?set\s+\"?(\w+)=(.*?)\"?\s*$",
              ".sh": r"\s*(?:export\s+)?(\w+)=(.*)$", ".ps1": r"\s*\$(?:env:)?(\w+)\s*=\s*(.*)$"}


def is_launcher(path: Path) -> bool:
    return Path(path).suffix.lower() in LAUNCHER_SUFFIXES


def launcher_config(text: str, path: Path) -> tuple[dict[str, Any], list[str]]:
    """The kohya config a launcher script's training command amounts to (its flags as the keys of kohya's TOML
    config: a flag alone is true, several values a list), and notes (a variable the script does not set). A
    LowvramError names a script that runs no LoRA training, or whose command cannot be read."""
    kind = Path(path).suffix.lower()
    lines, variables = _command_lines(text, kind)
    line, unset = _filled(_training_line(lines, path), variables, kind)
    try:
        words = shlex.split(line, comments=True) if kind == ".sh" else _windows_words(line, kind)
    except ValueError as exc:  # (an unclosed quote)
        raise LowvramError(f"--config: {path}: its training command cannot be read ({exc})") from None
    doc: dict[str, Any] = {}
    key = None
    for word in words:
        if SHELL_END.match(word):
            break
        ends = word.endswith(";")  # (--xformers; echo done)
        word = word.removesuffix(";")
        if word.startswith("--"):
            key, _, value = word[2:].partition("=")
            doc[key] = _typed(key, value) if "=" in word else True
            key = None if "=" in word else key
        elif key is not None:  # a value of the flag before it
            value = _typed(key, word)
            doc[key] = value if doc[key] is True else [*(doc[key] if isinstance(doc[key], list) else [doc[key]]),
                                                       value]
        if ends:
            break
    notes = [(f"{', '.join(unset)}: variable(s) the script does not set here, so read as written; give the value "
             "on the command line (e.g. --model, --data)")] if unset else []
    return doc, notes


def _command_lines(text: str, kind: str) -> tuple[list[str], dict[str, str]]:
    """The script's commands, each continued line joined and comment lines left out (a flag commented out in the
    middle of a command is not read), and its variables' values as it sets them."""
    commands, variables, current = [], {}, ""
    for raw in text.splitlines():
        if COMMENT.match(raw):
            continue
        stripped = raw.rstrip()
        if stripped.endswith(CONTINUATION[kind]):
            current += stripped[:-1] + " "
            continue
        command, current = current + raw, ""
        assigned = re.match(ASSIGNMENT[kind], command, re.IGNORECASE)
        # (CUDA_VISIBLE_DEVICES=0 accelerate launch ..., set X=0 && ...: the command, not an assignment)
        if assigned and not any(script in command for script in (*LORA_SCRIPTS, *OTHER_SCRIPTS)):
            value = _filled(assigned.group(2).strip().strip("\"'"), variables, kind)[0]  # (ROOT=/r; MODEL=$ROOT/m)
            variables[_named(assigned.group(1), kind)] = value
        else:
            commands.append(command)
    return commands + ([current] if current else []), variables


def _named(name: str, kind: str) -> str:
    """A variable's name as the shell tells it from others: in any case for cmd and PowerShell."""
    return name if kind == ".sh" else name.lower()


def _filled(line: str, variables: dict[str, str], kind: str) -> tuple[str, list[str]]:
    """`line` with the script's variables filled in (an sh default where one is unset), and the names left as
    written: set by nothing the script says."""
    unset = []

    def value(found: re.Match) -> str:
        name = next(group for group in (found.group(1), found.group(3) if kind == ".sh" else None) if group)
        default = found.group(2) if kind == ".sh" and found.group(1) else None
        known = variables.get(_named(name, kind), default)
        if known is None:
            unset.append(name)
        return found.group(0) if known is None else known

    return re.sub(VARIABLE[kind], value, line), sorted(set(unset))


def _training_line(lines: list[str], path: Path) -> str:
    """What follows the training script's name on the command that runs it (the first to give it flags)."""
    found = []
    for line in lines:
        for script in LORA_SCRIPTS:
            match = re.search(rf"(^|[\s\"'/\\]){re.escape(script)}[\"']?(\s|$)", line)
            if match:
                found.append(line[match.end():])
                break
        else:
            for script, what in OTHER_SCRIPTS.items():
                if re.search(rf"(^|[\s\"'/\\]){re.escape(script)}", line):
                    raise LowvramError(f"--config: {path} runs kohya's {script}, {what}; lowvram trains LoRAs of "
                                       "SD1.5 and SDXL (kohya's train_network.py and sdxl_train_network.py)")
    if not found:
        raise LowvramError(f"--config: {path} runs no kohya training script (train_network.py or "
                           "sdxl_train_network.py); give the launcher that does, or a kohya .toml config")
    return next((rest for rest in found if "--" in rest), found[0])


def _typed(key: str, value: str) -> Any:
    """A flag's value as kohya's argparse types it, and so as a TOML config holds it: a number where it reads as
    one (0 switches a setting off), else the text (a name stays text, whatever it reads as)."""
    return value if key in TEXT_KEYS else number_or_text(value)


def _windows_words(line: str, kind: str) -> list[str]:
    """A cmd or PowerShell line's words as the program gets them: double quotes group (--output_name="my cat" is
    one word) and go, and PowerShell's single quotes too (cmd's are letters: Bob's_lora); a backslash is a path's,
    not an escape; PowerShell's # starts a comment."""
    quoted = r'"[^"]*"' + (r"|'[^']*'" if kind == ".ps1" else "")
    plain = r"[^\s\"']+|'" if kind != ".ps1" else r"[^\s\"'#]+"
    words = []
    for word in re.findall(rf"(?:{plain}|{quoted})+|#", line):
        if word == "#":
            break
        words.append(re.sub(quoted, lambda group: group.group(0)[1:-1], word))
    return words
