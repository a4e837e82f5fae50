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
from lowvram.kohya_config import KOHYA_KEYS
from lowvram.kohya_values import number_or_text

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
# a variable of the script: cmd's %NAME%, sh's $NAME, ${NAME}, ${NAME:-default} and ${NAME[@]}, PowerShell's $NAME,
# $env:NAME and @NAME (splatted); group 1 (or 3) its name, group 2 an sh default
VARIABLE = {".bat": r"%(\w+)%()", ".cmd": r"%(\w+)%()",
            ".sh": r"\$\{(\w+)(?:\[[@*]\])?(?::?-([^}]*))?\}|\$(\w+)()",
            ".ps1": r"\$(?:env:)?(\w+)()|(?<!\S)@(\w+)()"}  # (a splat starts a word: me@host.com is no variable)
OUTPUT_FLAGS = {"output_dir": "--output", "output_name": "--name"}  # kohya's flags that name what a run writes
# a line that goes to the script's own folder: cmd's cd /d "%~dp0", PowerShell's Set-Location $PSScriptRoot, sh's
# cd "$(dirname "$0")"
SCRIPT_FOLDER_CD = {".bat": r'^\s*@?(cd|chdir|pushd)\s+(/d\s+)?"?%~dp0"?\s*$',
                    ".cmd": r'^\s*@?(cd|chdir|pushd)\s+(/d\s+)?"?%~dp0"?\s*$',
                    ".ps1": r'^\s*(Set-Location|cd|sl|Push-Location)\s+(-Path\s+)?"?\$PSScriptRoot"?\s*$',
                    ".sh": r'^\s*cd\s+"?\$\(\s*dirname\s+"?\$(0|\{?BASH_SOURCE(\[0\])?\}?)"?\s*\)"?\s*(&&.*)?$'}
ARRAY = object()  # an array variable's value: its flags come of the script's own conditions, which are not run


def is_launcher(path: Path) -> bool:
    return Path(path).suffix.lower() in LAUNCHER_SUFFIXES


def launcher_config(text: str, path: Path) -> tuple[dict[str, Any], list[str]]:
    """The kohya config a launcher script's training command amounts to (its flags as the keys of kohya's TOML
    config: a flag alone is true, several values a list; a unique prefix of a kohya flag is that flag, as its
    argparse reads it), and notes (what the script leaves to the shell: a variable it does not set, an array of
    flags). A LowvramError names a script that runs no LoRA training, or whose command cannot be read."""
    kind = Path(path).suffix.lower()
    folder = Path(path).resolve().parent  # (the script's own folder: cmd's %~dp0, PowerShell's $PSScriptRoot)
    # the folder it runs in: its own where it goes there first (kohya's .bat: cd /d "%~dp0"), else the one lowvram
    # runs in; the user's home
    here = str(folder) if re.search(SCRIPT_FOLDER_CD[kind], text, re.IGNORECASE | re.MULTILINE) else str(Path.cwd())
    home = str(Path.home())
    text = text.replace("%~dp0", f"{folder}/") if kind in (".bat", ".cmd") else text
    if kind == ".ps1":  # a variable PowerShell sets, one argument as the others; "$PSScriptRoot\img" is a path here
        text = re.sub(r"(\$PSScriptRoot|\$PWD|\$HOME|\$env:USERPROFILE)\\", r"\1/", text, flags=re.IGNORECASE)
        text = re.sub(r"\$?\(Get-Location\)(\.Path)?", lambda _: here, text, flags=re.IGNORECASE)
    if kind == ".sh":
        text = re.sub(r"\$\(pwd\)|`pwd`", lambda _: here, text)
    shells = {".ps1": {"psscriptroot": str(folder), "pwd": here, "home": home, "userprofile": home},
              ".sh": {"PWD": here, "HOME": home}}.get(kind, {"cd": here, "userprofile": home})
    (line, unset, arrays), notes = _training_line(_command_lines(text, kind, shells), path)
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
            known = [name for name in KOHYA_KEYS if name.startswith(key)]
            key = known[0] if key not in KOHYA_KEYS and len(known) == 1 else key  # (--max_train_epoch)
            doc[key] = _typed(key, value) if "=" in word else True
            key = None if "=" in word else key
        elif key is not None:  # a value of the flag before it
            value = _typed(key, word)
            doc[key] = value if doc[key] is True else [*(doc[key] if isinstance(doc[key], list) else [doc[key]]),
                                                       value]
        if ends:
            break
    for key in [key for key in OUTPUT_FLAGS if any(
            re.search(VARIABLE[kind], str(value)) for value in _values(doc.get(key)))]:
        notes.append(f"{key} {doc.pop(key)}: holds a variable the script does not set here, so it is left out "
                     f"(as written, what the run writes would be named after it); give {OUTPUT_FLAGS[key]} on the "
                     "command line")
    if unset:
        notes.append(f"{', '.join(unset)}: variable(s) the script does not set here, so read as written; give the "
                     "value on the command line (e.g. --model, --data)")
    if arrays:
        notes.append(f"{', '.join(arrays)}: array(s) of flags the script builds by its own conditions, which are not "
                     "run here, so none of their flags is read; give them on the command line (in lowvram's names)")
    python = sorted(set(re.findall(r"\{(\w+)\}", line)))
    if python:  # (a notebook cell's !accelerate launch ... --network_dim={network_dim})
        notes.append(f"{', '.join(python)}: a notebook's Python value(s) written in braces, which a script file does "
                     "not fill in; write the values")
    return doc, notes


def _values(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _command_lines(text: str, kind: str, given: dict[str, str]) -> list[tuple[str, list[str], list[str]]]:
    """The script's commands in order, each continued line joined and comment lines left out (a flag commented out
    in the middle of a command is not read), with the variables filled in as the lines before it set them (and
    `given`, the shell's own); and the names of each left as written (unset) and of its arrays."""
    commands, variables, current = [], dict(given), ""
    unknown: dict[str, list[str]] = {}  # a variable set from others the script does not set: theirs
    for raw in text.splitlines():
        if COMMENT.match(raw):
            continue
        stripped = raw.rstrip()
        if stripped.endswith(CONTINUATION[kind]):
            current += stripped[:-1] + " "
            continue
        command, current = current + raw, ""
        assigned = _assignment(command, kind)
        if assigned and assigned[1] is None:  # (a cmdlet's result, $x = Get-Date ...: not run here)
            variables.pop(_named(assigned[0], kind), None)
        elif assigned:
            name, value = assigned
            filled, unset, _ = ("", [], []) if value is ARRAY else _filled(value, variables, kind, False, unknown)
            variables[_named(name, kind)] = value if value is ARRAY else filled
            unknown[_named(name, kind)] = unset
        else:
            commands.append(_filled(command, variables, kind, unknown=unknown))
    return commands + ([_filled(current, variables, kind, unknown=unknown)] if current else [])


def _assignment(command: str, kind: str) -> tuple[str, Any] | None:
    """(name, value) where the command sets a variable and does nothing else; its value as the shell reads it (a
    comment after it left out; ARRAY for an array)."""
    if kind == ".sh":
        found = re.match(r"\s*(?:export\s+)?(\w+)=(.*)$", command)
        if not found:
            return None
        if found.group(2).lstrip().startswith("("):
            return found.group(1), ARRAY
        try:
            words = shlex.split(found.group(2), comments=True)
        except ValueError:
            return None
        # (CUDA_VISIBLE_DEVICES=0 accelerate launch ...: the command, with a variable of its own)
        return (found.group(1), words[0] if words else "") if len(words) <= 1 else None
    if kind == ".ps1":
        found = re.match(r"\s*\$(?:env:)?(\w+)\s*=\s*(.*)$", command)
        if not found or re.search(r";\s*\S", found.group(2)):  # ($env:X="0"; accelerate launch ...)
            return None
        if re.match(r"\s*(\[System\.Collections|@\()", found.group(2), re.IGNORECASE):
            return found.group(1), ARRAY
        joined = re.fullmatch(r"\s*\(?\s*Join-Path\s+(\S+)\s+(\S+?)\s*\)?\s*", found.group(2), re.IGNORECASE)
        if joined:  # (a folder's path built so: its two parts)
            return found.group(1), "/".join(part.strip("\"'") for part in joined.groups())
        if re.match(r"\s*(\$?\(|[a-z]+-[a-z]+\b)", found.group(2), re.IGNORECASE):  # a cmdlet's result: not run here
            return found.group(1), None
        words = _windows_words(found.group(2), kind)
        return found.group(1), words[0] if words else ""
    # set "X=a b" sets a b; set X="a b" sets "a b", quotes and all, which %X% then gives the command as one word
    found = (re.match(r'\s*@?set\s+"(\w+)=(.*)"\s*$', command, re.IGNORECASE)
             or re.match(r"\s*@?set\s+(\w+)=(.*?)\s*$", command, re.IGNORECASE))
    if not found or re.search(r"&|\|", command):  # (set X=0 && accelerate launch ...)
        return None
    return found.group(1), found.group(2).strip()


def _named(name: str, kind: str) -> str:
    """A variable's name as the shell tells it from others: in any case for cmd and PowerShell."""
    return name if kind == ".sh" else name.lower()


def _filled(line: str, variables: dict[str, Any], kind: str, command: bool = True,
            unknown: dict[str, list[str]] | None = None) -> tuple[str, list[str], list[str]]:
    """`line` with the script's variables filled in (an sh default where one is unset; an array's flags left
    out), and the names left as written, set by nothing the script says (`unknown`: those a variable's own value
    holds), and those of the arrays. In a `command` (not a variable's value) a PowerShell variable is one
    argument."""
    unset, arrays = [], []

    def value(found: re.Match) -> str:
        groups = found.groups()
        name = groups[0] or groups[2]
        default = groups[1] if kind == ".sh" and groups[0] else None
        known = variables.get(_named(name, kind), default)
        if known is ARRAY or "[@" in found.group(0) or "[*" in found.group(0) or found.group(0).startswith("@"):
            arrays.append(name)
            return ""
        if known is None:
            unset.append(name)
            return found.group(0)
        unset.extend((unknown or {}).get(_named(name, kind), []))
        if command and kind == ".ps1" and re.search(r"\s", known) and line[:found.start()].count('"') % 2 == 0:
            return f'"{known}"'  # (PowerShell passes a variable as one argument, spaces and all)
        return known

    return re.sub(VARIABLE[kind], value, line), sorted(set(unset)), sorted(set(arrays))


def _training_line(commands: list[tuple[str, list[str], list[str]]], path: Path
                   ) -> tuple[tuple[str, list[str], list[str]], list[str]]:
    """What follows the training script's name on the command that runs it (of several, the one with the most
    flags: not a --help run), with its unset and array names; and a note where several run it."""
    found = []
    for line, unset, arrays in commands:
        for script in LORA_SCRIPTS:
            match = re.search(rf"(^|[\s\"'/\\]){re.escape(script)}[\"']?(\s|$)", line)
            if match:
                found.append((line[match.end():], unset, arrays))
                break
        else:
            for script, what in OTHER_SCRIPTS.items():
                if re.search(rf"(^|[\s\"'/\\]){re.escape(script)}", line):
                    raise LowvramError(f"--config: {path} runs kohya's {script}, {what}; lowvram trains LoRAs of "
                                       "SD1.5 and SDXL (kohya's train_network.py and sdxl_train_network.py)")
    diffusers = next((match[0] for line, _, _ in commands
                      if (match := re.search(r"train_(?:text_to_image|dreambooth)\w*\.py", line))), None)
    if not found and diffusers:  # (the diffusers examples share most flag names with kohya's, not the launcher)
        raise LowvramError(f"--config: {path} runs the diffusers example script {diffusers}, whose command lowvram "
                           "does not read from a file: give its flags to lowvram train as lowvram's (its error for "
                           "them names each)")
    if not found:
        raise LowvramError(f"--config: {path} runs no kohya training script (train_network.py or "
                           "sdxl_train_network.py); give the launcher that does, or a kohya .toml config")
    chosen = max(found, key=lambda command: command[0].count("--"))
    flagged = [command for command in found if command[0].count("--") > 1]
    notes = [f"it runs the training script {len(flagged)} times: the command of the most flags is read"] if len(
        flagged) > 1 else []
    return chosen, notes


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
