"""The `lowvram` command's parser: one flag per config field (its help from the field), each command's own flags,
and one-line errors that name the closest flag (or kohya's name of one)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import typing
from pathlib import Path

from lowvram import __version__
from lowvram.config import (
    CHECK_DATA_SKIPS,
    FILES_LISTED_UP_TO,
    LORA_LAYERS,
    PATH_OPTIONS,
    SAVE_PRECISION,
    SECTIONS,
    WRITTEN_IMAGE_SUFFIXES,
    fields_by_name,
    flag_name,
    save_precision_name,
)
from lowvram.configure import list_presets
from lowvram.console import another_process
from lowvram.hardware import SIZE_UNITS
from lowvram.housekeeping import cache_folder, parse_age
from lowvram.option_values import MAX_RESOLUTION, MIN_RESOLUTION
from lowvram.resize import DYNAMIC
from lowvram.samplers import SAMPLERS, sampler_name


class _Once(argparse.Action):
    """An option given once: argparse keeps the last of two, and the first would be dropped unsaid."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice; give it once"
                         + (" (--count N draws several images of one prompt)" if option_string == "--prompt" else ""))
        setattr(namespace, self.dest, values)


class _Last(argparse._StoreAction):
    """A file or folder option given again: the last counts, as argparse takes it, but said (a second
    --sample-prompt-file or --data, read as a second one to add, was dropped unsaid). A number given again is a
    script's override of its base flags, as usual, and unsaid."""

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = getattr(namespace, self.dest, None)
        if hasattr(namespace, self.dest) and earlier != values and not another_process():  # (the main one says it)
            print(f"note: {option_string} given twice: {values} counts, not {earlier}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def _usage(command: str, own: str = "") -> str:
    """A usage line of the options most runs give, wrapped as argparse wraps its own to 80 columns."""
    head, lines = f"lowvram {command} ", [""]
    for part in re.findall(r"\[[^]]*\]", f"[-h] [--config FILE] [--preset NAME] {own}[--model MODEL] [--data DIR] "
                           "[--output DIR] [OPTION ...]"):
        if lines[-1] and len("usage: " + head + lines[-1] + " " + part) > 80:
            lines.append("")
        lines[-1] += (" " if lines[-1] else "") + part
    return head + ("\n" + " " * len("usage: " + head)).join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line, with the closest valid flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # `--lr -1e-4` and `--vram -4GB` are values (checked and refused as such), not flags: Python 3.11's pattern
        # misses exponents and sizes
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?([KMGT]i?B?)?$", re.IGNORECASE)

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # for error(): another tool's flags among them
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if message.startswith("the following arguments are required"):  # (a kohya command: its names answered too)
            from lowvram.kohya_names import kohya_hint

            flags = [o for a in self._actions for o in a.option_strings]
            command = self.prog.split()[-1]  # (a typo beside them answered too: else it came on the next run)
            # (a flag of its own is answered by nothing: its kohya look-alike's hint named it as its own replacement)
            hints = [kohya_hint(word, command, flags) or _device_hint(word)
                     or _closest_flag(word.split("=")[0], flags, command) for word in getattr(self, "_given", ())
                     if word.startswith("--") and word.split("=")[0] not in flags]
            message += "".join(f"; {hint}" for hint in hints if hint)
        elif "unrecognized arguments:" in message:
            from lowvram.kohya_names import is_other_tools_flag, kohya_hint

            words = message.split(":", 1)[1].split()
            bad = [word for word in words if word.startswith("-")]
            flags = [o for a in self._actions for o in a.option_strings]
            command = self.prog.split()[-1]
            hints = [kohya_hint(b, command, flags) or _device_hint(b)
                     or (None if is_other_tools_flag(b, command) else _closest_flag(b.split("=")[0], flags, command))
                     for b in bad]
            hint = "; ".join(h for h in hints if h)
            # (a flag's name: "--instance_prompt=a photo of sks dog", one word, reached here split at its spaces)
            message = f"unknown option {' '.join(word.split('=')[0] for word in bad)}" + (f" ({hint})" if hint else "")
            kohyas = [h for h in hints if h and "is kohya's name" in h]
            diffusers = [h for h in hints if h and "is the diffusers scripts' or SimpleTuner's name" in h]
            if command == "train" and len(kohyas) >= 4 and diffusers:  # a diffusers script's command: no launcher
                named = kohyas + diffusers  # script of kohya's reads it, and most of its flags are kohya's too
                message = (f"unknown options: {len(named)} of them are the diffusers scripts' flags ({bad[0]} ...); "
                           "write each as lowvram's: " + ", ".join(map(_kohya_pair, named))
                           + "".join(f"; {h}" for h in hints if h and h not in named))
            elif command == "train" and len(kohyas) >= 4:  # a kohya command line pasted: one way for all of it
                theirs = sum("is kohya" in h for h in hints if h)
                message = (f"unknown options: {theirs} of them are kohya's flags ({bad[0]} ...); lowvram reads a "
                           "kohya command as it is from a launcher script: save it (accelerate launch "
                           "train_network.py --flags) as train.sh or train.bat and give --config train.sh; or write "
                           "each as lowvram's: " + ", ".join(map(_kohya_pair, kohyas))
                           + "".join(f"; {h}" for h in hints if h and h not in kohyas))  # (those without one)
            if not bad:  # a word without its flag
                taken = [action for action in self._actions if not action.option_strings]
                if any(action.nargs in ("+", "*") for action in taken):  # argparse takes them in one run
                    fix = (f"give {self.prog}'s {taken[0].metavar or taken[0].dest} together, all before or all "
                           "after the options")
                elif taken:
                    fix = f"{self.prog} takes one {taken[0].metavar or taken[0].dest}"
                else:
                    fix = "each value goes right after its option's flag (one is missing, or an option got two)"
                if spaced := _unquoted_path(getattr(self, "_given", []), words[0]):
                    fix = f"a path with spaces is one argument only in quotes: \"{spaced}\""
                dashed = next((word for word in getattr(self, "_given", ()) if word.startswith(tuple(DASHES))), None)
                if dashed:  # pasted from a page or a document that joined the dashes (--model then a value)
                    fix = f"{dashed[0]} is a typographic dash, not two hyphens: write --{dashed.lstrip(DASHES)}"
                elif marks := "".join(mark for mark in CURLY_QUOTES if mark in words[0]):
                    what = "is a typographic quote" if len(marks) == 1 else "are typographic quotes"
                    fix = f"{marks} {what}, which the shell keeps as letters: type them again as \" (or ')"
                if words[0] in ("^", "`"):  # a command copied from a .bat or a PowerShell script, line by line
                    shell = "cmd" if words[0] == "^" else "PowerShell"
                    fix = (f"{words[0]} ends a line of a command in Windows' {shell}; here a line goes on after \\ "
                           "(or write the command on one line)")
                message = f"unexpected argument '{words[0]}': {fix}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# other programs' device choice (the diffusers examples', a Mac user's --device mps): lowvram picks by itself
DEVICE_FLAGS = ("--device", "--gpu", "--gpu_id", "--gpu-id")
DEVICE_HINT = ("lowvram trains on a CUDA GPU where there is one, else on the CPU; CUDA_VISIBLE_DEVICES=1 picks "
               "another GPU; Apple's GPUs (mps) are not supported: a Mac trains on its CPU")


def _device_hint(word: str) -> str | None:
    return DEVICE_HINT if word.split("=")[0] in DEVICE_FLAGS else None


DASHES = "\u2014\u2013"  # em and en dashes: what a blog's or a word processor's text makes of --
CURLY_QUOTES = "\u201c\u201d\u2018\u2019"


def _kohya_pair(hint: str) -> str:
    """A kohya flag's hint as a pasted command's list names it: its name and lowvram's, without the notes (which
    the flag given alone says)."""
    from lowvram.kohya_names import named_flags

    kohya, ours = re.split(r" is (?:kohya's|the diffusers scripts' or SimpleTuner's) name; ", hint, maxsplit=1)
    if not ours.startswith("lowvram's is "):  # (lowvram has none: the default, or always so)
        return f"{kohya} not needed"
    bare = re.sub(r"\([^)]*\)", "", ours)
    if len(set(named_flags(bare))) > 1 and ", or " not in bare:  # (--network_args: several, by what it holds)
        return f"{kohya} as several (give {kohya.split('=', 1)[0]} alone to see which)"
    return f"{kohya} as " + ours.removeprefix("lowvram's is ").split(" (", 1)[0]


def _unquoted_path(given: list[str], word: str) -> str | None:
    """The path a space split in two where a word without its flag is its end (--data /srv/10_ohwx mug, unquoted:
    kohya's folder names hold spaces), where joined it names a file or folder that is there."""
    for at in (i for i, part in enumerate(given) if part == word):
        first, last = at, at  # the words about it that no flag starts
        while first > 0 and not given[first - 1].startswith("-"):
            first -= 1
        while last + 1 < len(given) and not given[last + 1].startswith("-"):
            last += 1
        for start in range(first, at + 1):
            for end in range(max(at, start + 1), last + 1):
                if Path(joined := " ".join(given[start:end + 1])).expanduser().exists():
                    return joined
    return None


PATH_WORDS = ("dir", "directory", "folder", "path", "file")  # what a flag naming a place is often spelt with


# flags a notebook or job script reaches for to quiet or log a run (--quiet, -q, --log-file, --json)
LOGGING_WORDS = {"quiet", "q", "silent", "no-progress", "no-progress-bar", "log-file", "logfile", "log", "json",
                 "log-json"}


def _closest_flag(word: str, flags: list[str], command: str = "train") -> str | None:
    """'did you mean --lr?' for a typo of a lowvram flag, or of the kohya name of one (--lerning_rate)."""
    from lowvram.kohya_names import TRAINING_COMMANDS, others_single_flags

    names = {flag.lstrip("-"): flag for flag in flags if flag.startswith("--")}
    theirs = others_single_flags() if command in TRAINING_COMMANDS else {}  # (their training flags)
    kohya = {name.lstrip("-").replace("_", "-"): flag for name, flag in theirs.items() if flag in flags}
    typed = word.lstrip("-").replace("_", "-")
    if command == "train" and typed == "profile":  # (a card to plan for: train runs on the one present)
        return ("--profile is plan's: train --auto plans for the GPU present, --vram SIZE caps it; lowvram plan "
                "--profile NAME shows what it picks on that card")
    if command == "caption" and typed in ("caption-prefix", "caption-suffix"):  # (kohya_ss's captioning tab has them)
        return (f"--{typed} is train's and check-data's: it joins each caption as it trains, the files left as they "
                "are")
    if command == "train" and typed in LOGGING_WORDS:  # (a notebook's or a scheduler's log: what it already has)
        return ("train prints plain lines, no live bar, where its output is no terminal: `lowvram train ... > "
                "train.log 2>&1` keeps a log; each step's figures are in <output>/metrics.jsonl as JSON (--tensorboard "
                "and --wandb-project log them there too)")
    if typed in ("no-sample", "no-samples", "no-sampling"):  # (a preset's or config's prompts drawn at the end)
        return ("samples are drawn only of --sample-prompt or --sample-prompt-file's prompts: leave them out (or "
                "--sample-every 0 for none before the end)")
    # a flag with a word of its kind added (--data-dir, --output-folder, --model-path), a common abbreviation
    # (--te-lr), or its beginning (generate --out): difflib's closest spelling is another flag (--reg-data, --count)
    spelt = [("text-encoder" if part == "te" else part) for part in typed.split("-")]
    while spelt[1:] and spelt[-1] in PATH_WORDS and "-".join(spelt) not in names:  # (its last words alone:
        spelt.pop()                                                                 # --sample-prompt-file-dir)
    if "-".join(spelt) in names and "-".join(spelt) != typed:
        return f"did you mean {names['-'.join(spelt)]}?"
    match = difflib.get_close_matches(typed, list(names) + list(kohya), n=1)
    begun = [name for name in names if len(typed) >= 3 and name.startswith(typed)]
    if len(begun) == 1 and not difflib.get_close_matches(typed, list(names), n=1, cutoff=0.85):  # (--cop: --crop)
        return f"did you mean {names[begun[0]]}?"
    # its words reordered (--prompt-negative); a flag named with a word of its own (--host-ram, --vram-limit) where
    # the closest spelling shares none of its words (--ram-limit got --flip)
    typed_words = set(typed.split("-"))
    reordered = [flag for name, flag in names.items() if set(name.split("-")) == typed_words]
    if reordered:
        return f"did you mean {reordered[0]}?"
    words = {names[part] for part in typed_words if part in names}
    if len(words) == 1 and (not match or not typed_words & set(match[0].split("-"))):
        return f"did you mean {words.pop()}?"
    if not match:
        return None
    flag = names.get(match[0]) or kohya[match[0]]
    if flag.startswith("--no-") and not typed.startswith("no") and "--" + flag[5:] in flags:
        flag = "--" + flag[5:]  # --random-flip means --flip, never the --no-flip it spells closer to
    return f"did you mean {flag}?"


def _add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] = tuple(SECTIONS),
                      skip: tuple[str, ...] = ()) -> None:
    """One flag per config field, grouped by section; the field's metadata is its help."""
    table = fields_by_name()
    groups = {section: parser.add_argument_group(section) for section in sections}
    for name, (section, f, kind) in table.items():
        if section in sections and name not in skip:
            _add_field_flag(groups[section], f, kind)


def _add_option_flags(parser: argparse.ArgumentParser, title: str) -> None:
    """`lowvram caption`'s flags, from its options dataclass (DIR is positional)."""
    from lowvram.caption import CaptionConfig

    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(CaptionConfig)
    for f in dataclasses.fields(CaptionConfig):
        if f.name != "data":
            _add_field_flag(group, f, hints[f.name])


def _add_field_flag(group, f: dataclasses.Field, kind) -> None:
    """The flag of one option field: its metadata is the help, the choices and the metavar."""
    meta = f.metadata
    shown = "" if f.default in (None, dataclasses.MISSING) else f" [default: {f.default}]"
    metavar, listed = meta["metavar"], ""
    if meta["choices"] and not metavar and len(",".join(meta["choices"])) > 40:  # argparse's {a,b,...} runs past 80
        metavar = "NAME"                                                          # columns, unwrapped
        if not all(re.search(rf"\b{re.escape(choice)}\b", meta["help"]) for choice in meta["choices"]):
            listed = f" One of: {', '.join(meta['choices'])}."
    kwargs = {"dest": f.name, "default": argparse.SUPPRESS,
              "help": (meta["help"] + listed + shown).replace("%", "%%")}  # argparse formats help with %
    if kind is bool and flag_name(f).startswith("--no-"):  # (kohya's --no_metadata): its opposite is --metadata
        group.add_argument(flag_name(f), action="store_true", **kwargs)
        group.add_argument("--" + flag_name(f)[5:], action="store_false", dest=f.name, default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)
    elif kind is bool:
        group.add_argument(flag_name(f), action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(kind) is tuple:
        group.add_argument(flag_name(f), action="append", metavar=meta["metavar"], **kwargs)
    elif meta.get("spelling"):  # another tool's name for a choice is read as the choice
        group.add_argument(flag_name(f), type=_spelled_by(meta["spelling"]), choices=meta["choices"],
                           metavar=metavar, **kwargs)
    else:
        group.add_argument(flag_name(f), choices=meta["choices"], metavar=metavar,
                           action=_Last if f.name in PATH_OPTIONS else "store", **kwargs)


def _spelled_by(spelling):
    def read(text: str) -> str:
        try:
            return spelling(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return read


def _port(text: str) -> int:
    """A port to serve on: 1 to 65535 (0, any free one, would leave the browser not knowing where)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port from 1 to 65535")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowvram", allow_abbrev=False, description="LoRA training for Stable Diffusion 1.5 and SDXL on small GPUs.")
    parser.add_argument("--version", action="version", version=f"lowvram {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # (the usage argparse writes lists every option: 100 lines above the help; the groups below say them all)
    train = sub.add_parser("train", allow_abbrev=False, help="train a LoRA", usage=_usage("train"),
                           description="Train a LoRA. Options come from --config (TOML, same names in sections "
                           "[model] [data] [network] [optim] [training] [validation] [memory] [output]) and from "
                           "flags, which override the file. Most runs need only --model, --data, --output, --max-steps "
                           "or --epochs, and --auto; the sections below hold the rest.")
    train.add_argument("--config", type=Path, help="TOML config file (paths in it are relative to the file), a "
                       "kohya sd-scripts config file, a kohya_ss GUI config (.json) or a OneTrainer config (.json), "
                       "read as they read them, or a LoRA lowvram trained (.safetensors: the recipe it keeps)")
    train.add_argument("--preset", help=f"starting settings for a kind of job ({', '.join(list_presets())}); "
                       "--config and flags override them")
    train.add_argument("--auto", action="store_true", help="let the memory planner choose --unet-weights, "
                       "--gradient-checkpointing and --optimizer for this GPU (flags you give are kept)")
    train.add_argument("--vram", metavar="SIZE", help="with --auto: plan for, and keep the run within, at most this "
                       f"much VRAM (e.g. 6GB; {SIZE_UNITS})")
    train.add_argument("--ram", metavar="SIZE", help="with --auto: plan for this much host RAM instead of the "
                       f"machine's (e.g. 16GB where swap takes the loading peak, slowly; {SIZE_UNITS})")
    train.add_argument("--dry-run", action="store_true", help="print every option the run would train with, as the "
                       "<name>.toml it writes (a kohya or OneTrainer config read as lowvram reads it), and train "
                       "nothing; lowvram plan with the same options shows its memory")
    _add_config_flags(train)

    plan = sub.add_parser("plan", allow_abbrev=False, help="estimate memory and pick a strategy (dry run)",
                          usage=_usage("plan", "[--profile NAME | --vram SIZE] [--ram SIZE] [--json] "),
                          description="Estimate the peak VRAM of every phase (caching, training, sampling, "
                          "saving) and the host RAM of loading, training and saving, per component, for each "
                          "memory strategy, and say what fits: without a GPU and without loading weights. Takes the "
                          "same options as train.")
    plan.add_argument("--config", type=Path, help="TOML config file, as for train")
    plan.add_argument("--preset", help="starting settings, as for train")
    own = [  # plan's own flags, which its printed train command leaves out (train's --vram needs --auto)
        plan.add_argument("--profile", help="plan for a GPU profile (see lowvram doctor --profiles)"),
        plan.add_argument("--vram", metavar="SIZE", help=f"plan for a GPU with this much free VRAM (e.g. 6GB; "
                          f"{SIZE_UNITS}), taken to have bf16 (Ampere or newer; --mixed-precision fp16 plans for an "
                          "older card)"),
        plan.add_argument("--ram", metavar="SIZE", help=f"host RAM the run may take (e.g. 12GB; {SIZE_UNITS}; "
                          "default: this machine's total, or --profile's), planned with no room kept for the system "
                          "and other programs: on a 16 GB laptop whose desktop and browser hold 4 GB, give 12GB"),
        plan.add_argument("--json", action="store_true", help="print the plan as JSON")]
    plan.set_defaults(plan_only={flag: 0 if action.nargs == 0 else 1 for action in own
                                 for flag in action.option_strings})
    _add_config_flags(plan)

    doc = sub.add_parser("doctor", allow_abbrev=False, help="what this machine can do",
                         description="Report the GPU, its memory and precision support, whether xformers, "
                         "bitsandbytes and optimum-quanto work here, host RAM and free disk.")
    doc.add_argument("--profiles", action="store_true", help="list the GPU profiles plan --profile knows")
    doc.add_argument("--json", action="store_true", help="print the report as JSON, for a script or a lab's "
                     "dashboard: the machine's figures in bytes, and each line of the table")

    cache = sub.add_parser("cache", allow_abbrev=False, help="what the cache holds; remove what no run used lately",
                           description="Show the cache folder's parts (latents, text embeddings, scan indexes) and "
                           "their sizes, or remove the entries no run used for a while, which the next run that "
                           "needs them rebuilds. Captions kept from before an edit are never removed.")
    cache.add_argument("--cache-dir", type=cache_folder, metavar="DIR", help="the cache (default: "
                       "$LOWVRAM_CACHE_DIR, else $XDG_CACHE_HOME/lowvram or ~/.cache/lowvram)")
    removal = cache.add_mutually_exclusive_group()
    removal.add_argument("--unused-for", type=parse_age, metavar="AGE", help="remove the entries no run used for this "
                         "long: days (30 or 30d), hours (12h) or weeks (2w)")
    removal.add_argument("--clear", action="store_true", help="remove every latent, text embedding and scan index")
    cache.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")

    check = sub.add_parser("check-data", allow_abbrev=False, help="scan a dataset and report every file",
                           description="Read every file of a dataset once and report what was found and what "
                           "training will do with it (convert, crop, skip and why), per folder and bucket. "
                           "Nothing in the folder is modified.")
    _add_data_argument(check, "dataset folder, or a kohya or OneTrainer dataset file")
    check.add_argument("--report", type=Path, metavar="PATH", help="also write the full report as JSON (- writes it "
                       "to stdout, and the tables to stderr)")
    check.add_argument("--json", action="store_true",
                       help="the full report as JSON on stdout, the tables on stderr (--report -), as plan's --json")
    check.add_argument("--verbose", action="store_true", help="list every usable file that has a note, with its bucket "
                       f"(without it, up to {FILES_LISTED_UP_TO} are listed, then a count; --json lists every file "
                       "with its bucket)")
    check.add_argument("--captions", action="store_true", help="list each usable image's caption as it trains "
                       "(trigger word, prefix and suffix added), and its tags by how many captions hold them")
    check.add_argument("--config", type=Path, help="a training config: its [model] and [data] options apply")
    check.add_argument("--preset", help="a preset: its [data] options apply")
    _add_config_flags(check, sections=("model", "data"), skip=CHECK_DATA_SKIPS)

    gen = sub.add_parser("generate", allow_abbrev=False, help="render images with a LoRA",
                         description="Render images from a base model with LoRAs applied, as training renders its "
                         "samples (one model part on the GPU at a time). Prompts are read as AUTOMATIC1111 reads them: "
                         "(emphasis:1.2), BREAK, and long ones in 75-token chunks.")
    gen.add_argument("--model", help="base model, as for train --model [default: the built-in tiny model, or the "
                     "demo model a --lora was trained on]")
    gen.add_argument("--model-family", choices=sorted(fields_by_name()["model_family"][1].metadata["choices"]),
                     help="force the architecture instead of detecting it")
    gen.add_argument("--vae", help="VAE to decode with, as for train --vae (a file or a folder, e.g. the "
                     "fp16-fixed SDXL VAE); give the one the LoRA trained with to render its samples again")
    gen.add_argument("--lora", action="append", metavar="FILE[:WEIGHT]", help="LoRA .safetensors file (kohya or "
                     "diffusers format), with its strength if not --weight's (style.safetensors:0.6); give it again "
                     "to stack several")
    gen.add_argument("--weight", type=float, default=None, help="the strength of each --lora that gives none of "
                     "its own [default: 1.0]")
    gen.add_argument("--prompt", required=True, action=_Once, help="text prompt; kohya's inline options work "
                     "(--n negative, --w --h size, --s steps, --l guidance, --d seed, --ss sampler) and win over the flags")
    gen.add_argument("--negative-prompt", default=None, action=_Once, help="negative prompt")
    gen.add_argument("--output", default="generated.png",  # (text: a folder's trailing / is kept)
                     help=f"image path, {', '.join(WRITTEN_IMAGE_SUFFIXES[:-1])} or {WRITTEN_IMAGE_SUFFIXES[-1]} "
                     "(written in that format), or a folder (one there, or a path ending in /) to write the next "
                     "free 00000.png, 00001.png ... in, as AUTOMATIC1111 numbers its outputs; with --count > 1, "
                     "numbered files [default: generated.png]")
    gen.add_argument("--overwrite", action="store_true", help="replace --output (or its numbered files) if it "
                     "exists; a file being read (--model, --lora) is never replaced")
    gen.add_argument("--count", type=int, default=1, help="number of images [default: 1]")
    gen.add_argument("--steps", type=int, default=25, help="denoising steps, 1 or more [default: 25]")
    gen.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale [default: 7.0]")
    gen.add_argument("--resolution", type=int, default=None, help="image size in pixels, a multiple of 8 from "
                     f"{MIN_RESOLUTION} to {MAX_RESOLUTION} [default: the model's]")
    for side in ("width", "height"):
        gen.add_argument(f"--{side}", type=int, default=None, help=f"image {side} in pixels, as --resolution "
                         "(AUTOMATIC1111's; the prompt's --" + side[0] + " wins) [default: --resolution]")
    gen.add_argument("--seed", type=int, default=None, help="seed of the first image, 0 to 4294967295; -1 draws "
                     "one and prints it [default: 0; in an output folder, the number its first image takes (00040.png: "
                     "40), so that images added later differ]")
    gen.add_argument("--clip-skip", type=int, choices=(1, 2, 3, 4), help="CLIP layers skipped from the end, as "
                     "train's --clip-skip [default: the LoRA's, else 1]")
    gen.add_argument("--sampler", type=_spelled_by(sampler_name), default=None,
                     help=f"sampler: {', '.join(SAMPLERS)} (kohya's and A1111's spellings work too) "
                     "[default: the model's own]")

    cap = sub.add_parser("caption", allow_abbrev=False, help="write captions for images that have none",
                         description="Write a caption file (--caption-extension) for each image of a dataset that has "
                         "none, with a WD14-style tagger (tags) or an image-to-text model such as BLIP (a sentence). "
                         "Nothing in the folder changes but the new caption files.")
    _add_data_argument(cap, "dataset folder (kohya-style N_name subfolders are captioned too), or a kohya dataset "
                            ".toml (its training folders)")
    cap.add_argument("--dry-run", action="store_true", help="say what would be captioned, and where the model would "
                     "run, without loading it")
    cap.add_argument("--vram", metavar="SIZE", help=f"plan for at most this much VRAM (e.g. 4GB; {SIZE_UNITS})")
    _add_option_flags(cap, "captioning")

    ui = sub.add_parser("ui", allow_abbrev=False, help="the local web app", description="Serve the web app: the "
                        "options form with the live VRAM plan, the dataset check and captions, and training with its "
                        "charts and samples. Needs the [ui] extra (pip install 'lowvram[ui]').")
    ui.add_argument("--port", type=_port, default=7860, help="port [default: 7860]")
    ui.add_argument("--listen", nargs="?", const="0.0.0.0", metavar="ADDRESS", help="serve on every network "
                    "interface (or on ADDRESS, as kohya_ss's --listen 0.0.0.0), not only this machine (anyone who can "
                    "reach it can start runs and read your folders)")
    ui.add_argument("--inbrowser", action="store_true", help="open the app in the default browser once it is up")
    ui.add_argument("--headless", action="store_true", help="kohya_ss's; it changes nothing: the app opens no "
                    "browser without --inbrowser")
    ui.add_argument("--share", action="store_true", help="also make a public gradio.live link (needs internet and "
                    "--auth: anyone with the link could start runs, write files and use this GPU)")
    ui.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this user name and password before showing "
                    "the app (AUTOMATIC1111's --gradio-auth); needed with --share")

    info = sub.add_parser("info", allow_abbrev=False, help="show a LoRA file's network and metadata",
                          description="Show what a LoRA .safetensors file (lowvram's, kohya's or another trainer's) "
                          "holds: its network type, layers and metadata, reading only its header. Exits 1 where it "
                          "holds no LoRA (a model, a checkpoint's adapters, no layers lowvram reads) and no rewrite "
                          "was asked for.")
    info.add_argument("file", type=Path, metavar="FILE")
    info.add_argument("--json", action="store_true", help="print it as JSON")
    info.add_argument("--strip-paths", action="store_true", help="first rewrite the file (atomically, same tensors) "
                      "without the local folders its metadata names, for sharing it")
    info.add_argument("--strip-captions", action="store_true", help="first rewrite the file without its dataset's "
                      "captions and folder names (the tag frequency keeps the trigger words alone), for sharing a "
                      "LoRA of private images")

    resize = sub.add_parser("resize", allow_abbrev=False, help="a LoRA file at a lower rank (kohya's resize_lora)",
                            description="Write a LoRA (or LoCon) file at a lower rank: each layer's update cut by its "
                            "singular values to the rank that keeps the most of it, a fixed rank or per layer by a "
                            "--dynamic rule (kohya's resize_lora.py). Any kohya-format file, whoever trained it.")
    resize.add_argument("lora", type=Path, metavar="FILE", help="the LoRA .safetensors file")
    _add_rank_flags(resize, "the new file [default: FILE-rRANK.safetensors beside it, FILE-rRANK-RULEPARAM with "
                    "--dynamic]", precision="the file's")
    merge = sub.add_parser("merge", allow_abbrev=False, help="several LoRA files as one, or into a model (kohya's "
                           "svd_merge_lora, merge_lora)",
                           description="Write several LoRA (or LoCon) files as one: each layer's updates, weighted, "
                           "summed and cut by their singular values to the rank that keeps the most of the sum, a "
                           "fixed rank or per layer by a --dynamic rule (kohya's svd_merge_lora.py). With --model, "
                           "fuse them into that model's weights instead and write the model (kohya's merge_lora.py): "
                           "a single file stays a single file, its other tensors as they were. With --model and no "
                           "FILE, the model is written as it is, in another form (kohya's "
                           "convert_diffusers20_original_sd.py: a diffusers folder as a single file for ComfyUI and "
                           "AUTOMATIC1111, or back) or cast by --save-precision. On the CPU; it takes "
                           "host RAM for the model and the file (about 14 GB for an fp16 SDXL checkpoint).")
    merge.add_argument("lora", nargs="*", metavar="FILE[:WEIGHT]", help="the LoRA .safetensors files, each with "
                       "its weight (default 1), e.g. style.safetensors:0.6 (none with --model: the model converted)")
    merge.add_argument("--model", metavar="MODEL", help="fuse the LoRAs into this model (as train --model: a "
                       "single-file checkpoint, a diffusers folder or a hub id) and write it to --output")
    merge.add_argument("--model-family", choices=sorted(fields_by_name()["model_family"][1].metadata["choices"]),
                       help="with --model: force the architecture instead of detecting it")
    _add_rank_flags(merge, "the merged file [default: merged.safetensors; with --model, a .safetensors name writes "
                    "a single-file checkpoint, any other a diffusers folder (a folder there already, not a model's, "
                    "gets the model as one file in it, as ComfyUI's models/checkpoints): merged.safetensors for a "
                    "single-file model, the folder merged otherwise]", rank_required=False,
                    precision="the first file's; with --model, the model's (fp16 for a hub model, fp32 for a "
                              "built-in one)")

    ext = sub.add_parser("extract", allow_abbrev=False, help="a LoRA from a fine-tuned model and its base (kohya's "
                         "extract_lora_from_models)", description="Write a LoRA of the difference between a "
                         "fine-tuned model and the model it was tuned from: each layer's change cut by its singular "
                         "values to --rank (kohya's extract_lora_from_models.py). Both models load on the CPU, in "
                         "--load-precision.")
    ext.add_argument("--base", required=True, metavar="MODEL", help="the model it was tuned from (as train --model)")
    ext.add_argument("--tuned", required=True, metavar="MODEL", help="the fine-tuned model")
    ext.add_argument("--rank", type=int, required=True, help="the LoRA's rank")
    ext.add_argument("--conv-rank", type=int, help="the rank of the 3x3 convolutions (--lora-layers full) "
                     "[default: --rank]")
    ext.add_argument("--lora-layers", choices=LORA_LAYERS, default="attn-mlp", help="which layers (as train's "
                     "--lora-layers) [default: attn-mlp, kohya's LoRA]")
    ext.add_argument("--min-diff", type=float, default=0.01, help="a text encoder is extracted only where it "
                     "changed by more than this [default: 0.01, kohya's]")
    ext.add_argument("--clamp-quantile", type=float, default=0.99, help="the singular vectors' values are clamped at "
                     "this quantile of their size, each side's at its own (1: not at all, the closest fit of the "
                     "rank) [default: 0.99, kohya's]")
    ext.add_argument("--model-family", choices=sorted(fields_by_name()["model_family"][1].metadata["choices"]),
                     help="force the architecture instead of detecting it")
    ext.add_argument("--output", type=Path, default=Path("extracted.safetensors"),
                     help="the LoRA file [default: extracted.safetensors]")
    precision = _spelled_by(save_precision_name)  # kohya's float is fp32
    ext.add_argument("--save-precision", type=precision, choices=SAVE_PRECISION, default="fp16",
                     help="its dtype [default: fp16]")
    ext.add_argument("--load-precision", type=precision, choices=SAVE_PRECISION,
                     help="the models' dtype on the CPU (fp32 takes twice the host RAM) [default: fp16 where both "
                     "are stored in fp16, else fp32, as kohya's loads them as stored]")
    ext.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser


def _add_rank_flags(parser: argparse.ArgumentParser, output_help: str, rank_required: bool = True,
                    precision: str = "") -> None:
    """resize's and merge's flags: the rank, the dynamic rule, the output file."""
    parser.add_argument("--rank", type=int, required=rank_required, help="the new rank; with --dynamic, the most a "
                        "layer keeps" + ("" if rank_required else " (not with --model)"))
    parser.add_argument("--conv-rank", type=int, help="the new rank of 3x3 convolutions (LoCon) [default: --rank]")
    parser.add_argument("--dynamic", choices=DYNAMIC, help="each layer's rank by a rule: sv_ratio keeps the "
                        "singular values above the largest / PARAM; sv_fro, PARAM of the Frobenius norm; "
                        "sv_cumulative, PARAM of the sum of singular values")
    parser.add_argument("--dynamic-param", type=float, metavar="PARAM", help="the rule's parameter (e.g. 8 for "
                        "sv_ratio, 0.9 for sv_fro)")
    parser.add_argument("--output", type=Path, help=output_help)
    parser.add_argument("--save-precision", type=_spelled_by(save_precision_name), choices=SAVE_PRECISION,
                        help=f"its dtype [default: {precision}]")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--verbose", action="store_true", help="each layer's new rank and what it kept, as kohya's "
                        "--verbose")


def _add_data_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """The dataset as the command's argument, or as --data, which `lowvram train` taught the hand to type."""
    parser.add_argument("data", metavar="DIR", nargs="?", help=what)
    parser.add_argument("--data", dest="data_flag", metavar="DIR", help=argparse.SUPPRESS)


# options of free text (not files): what they hold reaches the tokenizer or the files' metadata; the run's are
# marked so where they are declared, generate's and caption's own are these
FREE_TEXT = (*(name for name, (_, f, _) in fields_by_name().items() if f.metadata.get("text")),
             "prompt", "negative_prompt", "exclude_tags")


def utf8_text_arguments(args: argparse.Namespace, command: argparse.ArgumentParser) -> None:
    """Free text given on the command line, as UTF-8: under a C locale Python hands UTF-8 bytes over as lone
    surrogates, which are read again as UTF-8; other bytes (a terminal in Shift_JIS) are refused by their flag, as
    the tokenizer refused them with a TypeError."""
    for dest in (dest for dest in FREE_TEXT if getattr(args, dest, None)):
        value = getattr(args, dest)
        words = list(value) if isinstance(value, (list, tuple)) else [value]
        for i, word in enumerate(words):
            if not isinstance(word, str) or word.isascii():
                continue
            try:
                word.encode("utf-8")
                continue
            except UnicodeEncodeError:
                pass
            try:
                words[i] = word.encode("utf-8", "surrogateescape").decode("utf-8")
            except UnicodeError:
                flag = next((a.option_strings[0] for a in command._actions if a.dest == dest and a.option_strings),
                            dest)
                command.error(f"{flag}: {word.encode('utf-8', 'surrogateescape')!r} is not UTF-8 text (the terminal "
                              "wrote it in another encoding); set the terminal to UTF-8, or give it in a --config "
                              "file saved as UTF-8")
        if words != (list(value) if isinstance(value, (list, tuple)) else [value]):
            setattr(args, dest, type(value)(words) if isinstance(value, (list, tuple)) else words[0])
