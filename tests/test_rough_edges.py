"""Rough edges a new user hit (#19): a Windows-only warning on Linux, a disk-full message that named the same size
twice, latin-1 captions turned into replacement characters, Ctrl-C tracebacks, the toy model trained by default,
check-data's help naming another model than it used, and a --model-family that disagrees with the model."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_config
from PIL import Image
from rich.console import Console
from safetensors.torch import save_file

from lowvram.adapters.lora_files import tag_frequency
from lowvram.cli import build_parser, main
from lowvram.config import PLANNING_MODEL
from lowvram.configure import build_config, read_toml
from lowvram.data.buckets import default_buckets
from lowvram.data.cache import cache_problem
from lowvram.data.scan import scan_dataset
from lowvram.doctor import _auto_line, _cache_line, _gpu_line
from lowvram.errors import LowvramError
from lowvram.files import human_size
from lowvram.hardware import NO_GPU, Hardware, behind_windows_driver, detect, hardware_for, load_profile
from lowvram.kohya_names import (
    KOHYA_FLAGS,
    KOHYA_SCRIPT_FLAGS,
    LYCORIS_ARGS,
    OTHER_TRAINER_FLAGS,
    WITHOUT_COUNTERPART,
    named_flags,
)
from lowvram.models import load_model
from lowvram.models.ldm_layout import sd15_single_file
from lowvram.resolve import default_cache_dir
from lowvram.train.loop import train
from lowvram.train.progress import TrainingProgress

STEADY_THEN_FIVE_TIMES_SLOWER = [0.5] * 6 + [2.5] * 6


def printed_while_training(step_seconds: list[float], **progress_options) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200)
    with TrainingProgress(console, len(step_seconds), **progress_options) as progress:
        for step, seconds in enumerate(step_seconds, start=1):
            progress.update(step, loss=0.1, lr=1e-4, seconds=seconds)
    return out.getvalue()


def test_slow_steps_on_a_linux_cpu_run_say_nothing_about_windows_vram_spilling():
    printed = printed_while_training(STEADY_THEN_FIVE_TIMES_SLOWER)
    assert "step 12/12" in printed  # the run was reported, just without the warning
    assert "spilling VRAM" not in printed and "warning" not in printed


def test_where_the_driver_can_spill_the_same_slowdown_warns_once():
    printed = printed_while_training(STEADY_THEN_FIVE_TIMES_SLOWER, watch_spill=True)
    assert printed.count("spilling VRAM") == 1 and "0.50 s to 2.50 s" in printed


def test_forced_colour_through_a_pipe_still_prints_plain_progress_lines(monkeypatch):
    """ipykernel sets FORCE_COLOR, so a notebook's `lowvram train` wrote to a pipe that rich took for a terminal: a
    live bar, stored in the cell redraw by redraw (100 KB for 300 tiny steps)."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    printed = printed_while_training([0.5] * 12)
    assert "step 12/12" in printed and "\r" not in printed and "\x1b[2K" not in printed


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("notebook", ["JPY_PARENT_PID", "COLAB_RELEASE_TAG"])
def test_a_notebooks_shell_command_prints_plain_progress_lines_though_it_writes_to_a_terminal(notebook, monkeypatch):
    """`!lowvram train` in Jupyter or Colab writes to a pseudo-terminal: the bar, redrawn ten times a second, was kept
    in the cell frame by frame (93 KB for 20 steps), its cursor-ups not followed."""
    for name in ("JPY_PARENT_PID", "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(name, raising=False)

    def printed(steps: int) -> str:
        terminal = Terminal()
        with TrainingProgress(Console(file=terminal, width=200), steps) as progress:
            for step in range(1, steps + 1):
                progress.update(step, loss=0.1, lr=1e-4, seconds=0.5)
        return terminal.getvalue()

    assert "\x1b[2K" in printed(12)  # a terminal of its own: the bar
    monkeypatch.setenv(notebook, "1234")
    assert "step 12/12" in printed(12) and "\x1b[2K" not in printed(12) and "\r" not in printed(12)


def test_a_dumb_terminal_gets_plain_progress_lines(monkeypatch):
    """TERM=dumb (Emacs' shell, some screen readers'): rich draws no live bar there, and no plain line was printed
    either, so a run showed nothing until its last step."""
    for name in ("JPY_PARENT_PID", "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "dumb")
    terminal = Terminal()
    with TrainingProgress(Console(file=terminal, width=200), 12) as progress:
        for step in range(1, 13):
            progress.update(step, loss=0.1, lr=1e-4, seconds=5)
    printed = terminal.getvalue()
    assert "step 1/12" in printed and "step 12/12" in printed and "\x1b[" not in printed, printed


def test_a_whole_run_through_a_pipe_with_forced_colour_redraws_nothing(tmp_path):
    """The Colab notebook's `lowvram train` cell (FORCE_COLOR, a pipe): no spinner or bar is drawn there frame by
    frame (the model's loading spinner was, its frames stored in the cell)."""
    done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--output",
                           str(tmp_path / "out"), "--max-steps", "2", "--rank", "2"], capture_output=True, text=True,
                          env={**os.environ, "FORCE_COLOR": "1"}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loading tiny" in done.stdout and "saved" in done.stdout
    assert "\r" not in done.stdout + done.stderr and "\x1b[2K" not in done.stdout + done.stderr


def test_only_a_cuda_gpu_behind_the_windows_driver_watches_for_spilled_vram():
    assert not detect().can_spill_vram  # this test machine: Linux, no Windows driver
    assert behind_windows_driver(system="Windows", release="10")
    assert behind_windows_driver(system="Linux", release="5.15.153.1-microsoft-standard-WSL2")
    assert not behind_windows_driver(system="Linux", release="6.8.0-45-generic")
    gpu = Hardware("cuda", "NVIDIA GeForce RTX 3060", 12 * 2**30, True, shared_memory_fallback=True)
    assert gpu.can_spill_vram and not replace(gpu, shared_memory_fallback=False).can_spill_vram
    assert not replace(NO_GPU, shared_memory_fallback=True).can_spill_vram


def test_human_size_picks_the_unit_that_shows_the_size():
    sizes = [0, 1023, 1536, 5 * 2**20, 3 * 2**30, 300 * 2**10, int(45.2 * 2**30)]
    assert [human_size(n) for n in sizes] == ["0 B", "1023 B", "1.50 KiB", "5.00 MiB", "3.00 GiB", "300 KiB",
                                              "45.2 GiB"]


def test_a_cache_folder_short_of_space_names_two_different_sizes(tmp_path):
    needed = shutil.disk_usage(tmp_path).free + 1024
    message = cache_problem(tmp_path / "cache", needed)  # why it does not fit (the run then caches in memory)
    free, required = re.search(r"has ([\d.]+ \w+) free but the cache needs ([\d.]+ \w+)", message).groups()
    assert free != required, message
    assert "\n" not in message and "--cache-dir" in message
    # lowvram plan says it of a cache folder not made yet, writing nothing there (the run found it, past loading)
    from lowvram.data.cache_size import cache_room_problem

    assert cache_room_problem(tmp_path / "not" / "made", needed) == message.replace(str(tmp_path / "cache"),
                                                                                     str(tmp_path / "not" / "made"))
    assert cache_room_problem(tmp_path / "not" / "made", 1024) is None and not (tmp_path / "not").exists()


def dataset_with_captions(root, captions: dict[str, bytes]):
    folder = root / "5_thing"
    folder.mkdir(parents=True)
    for stem, caption in captions.items():
        Image.new("RGB", (96, 96), (200, 80, 40)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_bytes(caption)
    return root


def printed_summary(report) -> str:
    out = io.StringIO()
    report.print_summary(Console(file=out, width=300))
    return out.getvalue()


def test_a_latin1_caption_keeps_its_accents_and_the_summary_says_it_was_not_utf8(tmp_path):
    root = dataset_with_captions(tmp_path / "data", {"cafe": "café, naïve".encode("latin-1")})
    report = scan_dataset(root, default_buckets(64, 16))
    [record] = report.records
    assert record.caption == "café, naïve"
    assert "\ufffd" not in tag_frequency({record.folder: [record.caption]})  # what the LoRA's metadata carries
    assert "1 caption was not UTF-8; read in the Windows code page each one's note names: 5_thing/cafe.txt" in \
        printed_summary(report)
    assert "caption not UTF-8: read as cp1252, 'café, naïve' (save cafe.txt as UTF-8 to be sure)" in record.notes
    # Notepad's "ANSI" on a Japanese or Chinese Windows: read in its code page (as cp1252 they trained as garbling)
    captions = {"samurai": ("侍, 桜の木", "shift_jis"), "neko": ("猫娘，蓝色眼睛，长发", "gbk"),
                "smile": ("猫娘の女の子、笑顔★", "cp932"), "quoted": ("一个女孩，“微笑”……", "gbk"),
                "german": ("für Straße, Größe", "cp1252"), "portuguese": ("uma menina com coração", "cp1252"),
                # kanji alone (read as GBK), Big5 and GBK whose trail bytes are ASCII (read as cp1252), half-width
                # katakana beside kana (GBK), Big5's 中 (EUC-JP's い): each was misread
                "kanji": ("猫, 少女, 和服", "cp932"), "taiwan": ("貓, 女孩, 可愛", "big5"), "pets": ("猫, 狗, 花", "gbk"),
                "halfwidth": ("ｶﾜｲｲ, ねこ", "cp932"), "china": ("中國", "big5"), "spanish": ("¿Qué pasa?", "cp1252"),
                "french": ("crème brûlée, Æther, 50°", "cp1252"), "eucjp": ("猫娘の女の子、笑顔", "euc_jp"),
                "eucjp_short": ("ねこ, 笑顔", "euc_jp"),
                # half-width katakana alone, or with kanji, from an old Japanese editor (read as cp1252: ÛÝ¸ÞÍ±°)
                "hankaku": ("ﾛﾝｸﾞﾍｱｰ, 1girl", "cp932"), "hankaku_kanji": ("ｷｬﾗ, 笑顔", "cp932"),
                "hankaku_tag": ("ﾃｽﾄ, smile", "cp932"), "signs": ("Ãbc ½", "cp1252"),
                # (and no Western text's signs beside accented letters, nor a GBK text, read as half-width katakana)
                "half": ("1girl, ½ más, smile", "cp1252"), "squared": ("m², coração", "cp1252"),
                "mixed_gbk": ("女孩們, 笑", "gbk"),
                # a Russian or Ukrainian Windows' ANSI (read as cp1252: äåâóøêà)
                "russian": ("девушка, красные волосы", "cp1251"), "ukrainian": ("дівчина, ґанок, «сад»", "cp1251"),
                "short_gbk": ("中文", "gbk"), "robot": ("机器人", "gbk")}  # (read as cp1251: ЦРОД, »ъЖчИЛ)
    root = dataset_with_captions(tmp_path / "asian", {stem: text.encode(code) for stem, (text, code) in captions.items()})
    records = {record.path.stem: record for record in scan_dataset(root, default_buckets(64, 16)).records}
    assert {stem: record.caption for stem, record in records.items()} == {
        stem: text for stem, (text, _) in captions.items()}  # ("ção" is no GBK character, "★" no reason to doubt)
    assert "caption not UTF-8: read as Shift_JIS, '侍, 桜の木' (save samurai.txt as UTF-8 to be sure)" in \
        records["samurai"].notes
    assert any("read as GBK" in note for note in records["neko"].notes)


def test_captions_are_decoded_as_utf8_then_cp1252_then_latin1_byte_by_byte(tmp_path):
    root = dataset_with_captions(tmp_path / "data", {
        "bom": "\ufeffnaïve, utf-8 with a byte order mark".encode(),
        "plain": "naïve, utf-8".encode(),
        "quotes": "it\u2019s 5\u20ac".encode("cp1252"),  # bytes that latin-1 reads as control characters
        "undefined": b"caf\xe9 \x81",  # 0x81: no character in cp1252
    })
    index = tmp_path / "cache" / "scan.json"
    for _ in range(2):  # the second scan takes the images from the index; captions must come out the same
        report = scan_dataset(root, default_buckets(64, 16), index_path=index)
        captions = {record.relpath: record.caption for record in report.records}
        assert captions == {"5_thing/bom.png": "naïve, utf-8 with a byte order mark",
                            "5_thing/plain.png": "naïve, utf-8", "5_thing/quotes.png": "it\u2019s 5\u20ac",
                            "5_thing/undefined.png": "café \x81"}
        summary = printed_summary(report)
        assert "2 captions were not UTF-8; read in the Windows code page each one's note names: 5_thing/quotes.txt, " \
               "5_thing/undefined.txt" in summary


def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path):
    """Ctrl-C in the first seconds, while torch and diffusers are being imported: one line, exit code 130. (Started
    as from a terminal: this suite, run as a shell's background job, would pass its ignored SIGINT on.)"""
    for delay in (1.0, 2.5):
        here = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a handler: the command's default)
        try:
            run = subprocess.Popen([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                                    "--output", str(tmp_path / f"out{delay}"), "--max-steps", "5000"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, here)
        time.sleep(delay)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=300)
        assert run.returncode in (130, -signal.SIGINT), err[-3000:]  # what a shell shows as 130 either way
        assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err[-3000:]  # no traceback


@pytest.mark.skipif(not hasattr(os, "getsid"), reason="POSIX sessions")
def test_a_run_of_its_own_session_started_with_ctrl_c_ignored_takes_it():
    """A run the UI started (in a session of its own) under `nohup lowvram ui &` comes with SIGINT ignored: its steps
    take Ctrl-C over, but before them (the imports, the caching) the UI's Stop did nothing; a script's `lowvram
    train &` took it in its imports and steps, not between them. Another command as a shell's background job
    (`lowvram ui &` in a script) keeps it ignored, as the shell meant: a Ctrl-C at the terminal is not its."""
    said = ("import signal, sys; from lowvram.__main__ import signals_as_ctrl_c; signals_as_ctrl_c(sys.argv[1]); "
            "print(signal.getsignal(signal.SIGINT) == signal.default_int_handler, "
            "signal.getsignal(signal.SIGTERM) == signal.default_int_handler)")
    here = signal.signal(signal.SIGINT, signal.SIG_IGN)  # (passed on to the command, as a shell's `&` does)
    try:
        taken = [subprocess.run([sys.executable, "-c", said, command], capture_output=True, text=True, check=True,
                                start_new_session=own_session).stdout.split()
                 for command, own_session in (("ui", True), ("ui", False), ("train", False))]
    finally:
        signal.signal(signal.SIGINT, here)
    assert taken == [["True", "True"], ["False", "True"], ["True", "True"]]


def test_an_error_a_library_makes_of_ctrl_c_while_loading_is_the_interrupt():
    """The first Ctrl-C while the libraries load is remembered, not raised inside them (in a C extension's
    initialisation it aborted the process); a second raises at once. diffusers' lazy modules turn an import that
    it broke into 'RuntimeError: Failed to import ...' (or a recursion in the half-imported module): still the
    interrupt, so still one line."""
    from lowvram.cli import remembered_interrupt

    with remembered_interrupt() as received:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the loading goes on to its end
    assert received == [signal.SIGINT]
    with pytest.raises(KeyboardInterrupt), remembered_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises before this ends
        except KeyboardInterrupt as exc:
            raise RuntimeError("Failed to import diffusers.models.unets.unet_2d_condition") from exc
    with pytest.raises(RuntimeError), remembered_interrupt():  # an error without a Ctrl-C is the error
        raise RuntimeError("Failed to import")


def test_sigterm_before_the_steps_is_ctrl_c(capsys):
    """A CI job cancelled or `docker stop` while a run loads or caches: SIGTERM's default ended it at once, without a
    word, exit 143; as Ctrl-C it says "interrupted" and exits 130, and outside the run the handler is as it was."""
    from lowvram.cli import remembered_interrupt, stop_signals_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with stop_signals_interrupt():
        with remembered_interrupt() as received:  # while the libraries load: remembered, as Ctrl-C is
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        assert received == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):  # while caching
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) == before


def test_train_without_model_asks_for_one_instead_of_training_the_toy(capsys):
    assert main(["train", "--data", "sample", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--model: which base model?" in err and "--model tiny" in err and len(err.strip().splitlines()) == 1


def test_check_data_and_plan_say_the_model_they_assume_and_use_it(sample_data, capsys):
    for command in ("check-data", "plan"):
        assert main([command, "--help"]) == 0
        help_text = " ".join(capsys.readouterr().out.split())
        assert f"plan and check-data default to {PLANNING_MODEL}" in help_text and "[default: tiny]" not in help_text
    assert main(["check-data", str(sample_data)]) == 0
    assert "512x512" in capsys.readouterr().out  # sd15's buckets, as the help says


def test_a_model_family_that_disagrees_with_the_model_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "tiny", "--model-family", "sdxl", "--data", "sample",
                 "--output", str(tmp_path / "a")]) == 2
    assert "--model-family sdxl: tiny is tiny SD" in capsys.readouterr().err
    tiny = load_model("tiny").pipeline
    checkpoint = tmp_path / "sd.safetensors"
    save_file(sd15_single_file(tiny.unet, tiny.vae, tiny.text_encoder), str(checkpoint))
    for command in (["train", "--data", "sample", "--output", str(tmp_path / "b")], ["plan", "--vram", "8GB"]):
        assert main([*command, "--model", str(checkpoint), "--model-family", "tiny-sdxl"]) == 2
        err = capsys.readouterr().err
        assert f"--model-family tiny-sdxl: {checkpoint} is tiny SD" in err and len(err.strip().splitlines()) == 1


def test_kohya_flag_names_are_answered_with_the_lowvram_option(capsys):
    assert main(["train", "--model", "tiny", "--train_data_dir", "x", "--network_dim", "16",
                 "--learning_rate=1e-4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    for kohya, ours in (("--train_data_dir", "--data"), ("--network_dim", "--rank"), ("--learning_rate", "--lr")):
        assert f"{kohya} is kohya's name; lowvram's is {ours}" in err
    assert build_config({"model": "tiny", "data": "sample", "resolution": "512,512"}).data.resolution == 512
    assert build_config({"model": "tiny", "data": "sample", "resolution": "512, 768"}).data.resolution == 632
    with pytest.raises(LowvramError, match=r"'512,768' is kohya's width,height; with buckets off \(--no-bucket"):
        build_config({"model": "tiny", "data": "sample", "resolution": "512,768", "bucket": False})


def test_every_kohya_name_points_at_a_real_option_and_the_readme_shows_the_table():
    train_flags = {o for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                   for o in a.option_strings}
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for kohya, ours in KOHYA_FLAGS.items():
        assert kohya not in train_flags  # a shared name needs no entry
        named = re.findall(r"--[a-z0-9-]+", ours)
        assert all(flag in train_flags for flag in named), (kohya, ours)
        assert f"| `{kohya}` |" in readme, kohya
    for lycoris, ours in LYCORIS_ARGS.items():  # (LyCORIS's network_args typed as flags: --conv_dim 8)
        assert lycoris not in train_flags and all(flag in train_flags for flag in named_flags(ours)), lycoris


def test_lycoris_network_args_typed_as_flags_name_lowvrams(capsys):
    """--conv-dim 8, --algo loha, --dora-wd: 'unknown option' alone."""
    from lowvram.cli import main

    for typed, says in (("--conv-dim", "lowvram's is --conv-rank (with --lora-layers full"),
                        ("--algo", "lowvram's is --network (loha or lokr"),
                        ("--dora_wd", "lowvram's is --network dora")):
        assert main(["train", "--model", "tiny", "--data", "sample", typed, "1"]) == 2
        assert f"unknown option {typed} ({typed} is LyCORIS's network_args name; {says}" in capsys.readouterr().err


def command_flags(command: str) -> set[str]:
    return {o for a in build_parser()._subparsers._group_actions[0].choices[command]._actions for o in a.option_strings}


def test_every_other_tools_name_points_at_a_real_option_of_its_command():
    train_flags = command_flags("train")
    for theirs, ours in OTHER_TRAINER_FLAGS.items():
        assert theirs not in train_flags and theirs not in KOHYA_FLAGS, theirs
        assert all(flag in train_flags for flag in named_flags(ours)), (theirs, ours)
    for command, (_, table) in KOHYA_SCRIPT_FLAGS.items():
        flags = command_flags(command)
        for theirs, ours in table.items():
            assert theirs not in flags, (command, theirs)
            named = named_flags(re.sub(r"inline .*", "", ours))  # (not a prompt's, quoted)
            assert all(flag in flags for flag in named), (command, theirs, ours)


def unknown_option_hint(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("argv", "hint"), [
    (["train", "--network-dim", "16"], "--network-dim is kohya's name; lowvram's is --rank"),  # dashes for underscores
    (["train", "--enable-bucket"], "lowvram has none (the default; --no-bucket turns it off)"),  # (was: --no-bucket)
    (["train", "--lowram"], "--lowram is kohya's name; lowvram has none (not needed: models load in the precision"),
    (["train", "--sample-every-n-steps", "5"], "lowvram's is --sample-every N"),  # (was: --sample-steps)
    (["train", "--random_flip"], "--random_flip is the diffusers scripts' or SimpleTuner's name; lowvram's is --flip"),
    (["train", "--lora_rank", "4"], "lowvram's is --rank"),  # (was: --block-ranks)
    (["train", "--random-flp"], "did you mean --flip?"),  # a typo closest to --no-flip: never the opposite
    (["train", "--center_crop"], "lowvram's is --no-bucket --crop center"),  # (was: --crop center, still buckets)
    (["train", "--use_dora"], "lowvram's is --network dora"),  # (was: did you mean --ema?)
    (["train", "--local_rank", "0"], "lowvram has none (not needed: accelerate launch"),  # (was: --rank, the LoRA's)
    (["train", "--train_text_encoder"], "--train_text_encoder is the diffusers scripts' or SimpleTuner's name"),
    # the diffusers scripts' look-alikes of lowvram's flags (each was "did you mean" the other thing)
    (["train", "--cache_dir", "hf"], "download cache is HF_HOME here; lowvram's --cache-dir is another thing"),
    (["train", "--train_text_encoder_ti"], "pivotal tuning, a textual inversion beside the LoRA, is not trained"),
    (["train", "--image_interpolation_mode", "lanczos"], "lowvram has none (not needed: images are resized with Lan"),
    (["train", "--instance_prompt=a photo of sks dog"], "unknown option --instance_prompt (--instance_prompt is the"),
    (["generate", "--prompt", "x", "--network_weights", "a.safetensors"],
     "--network_weights is from kohya's gen_img.py; lowvram generate's is --lora FILE[:WEIGHT]"),
    (["generate", "--prompt", "x", "--scale", "7"], "lowvram generate's is --guidance"),  # (was: --sampler)
    # AUTOMATIC1111's (each was "unknown option" alone)
    (["generate", "--prompt", "x", "--cfg-scale", "7"], "--cfg-scale is AUTOMATIC1111's; lowvram generate's is --guid"),
    (["generate", "--prompt", "x", "--batch-size", "2"], "lowvram generate's is --count (drawn one after another)"),
    (["generate", "--prompt", "x", "--hr-scale", "2"], "lowvram generate has none (no hires fix: it draws at --width"),
    (["generate", "--prompt", "x", "--scheduler", "karras"], "the schedule is in --sampler's name"),
    (["merge", "a.safetensors", "--models", "a.safetensors"], "lowvram merge's is the LoRA files as merge's FILE"),
    (["resize", "a.safetensors", "--rank", "4", "--dynamic_method", "sv_fro"], "lowvram resize's is --dynamic"),
    (["resize", "a.safetensors", "--rank", "4", "--dynamic_param", "0.9"], "lowvram resize's is --dynamic-param"),
    (["extract", "--base", "a", "--tuned", "b", "--rank", "4", "--conv_dim", "4"], "lowvram extract's is --lora-layers full --conv-rank"),
    (["caption", "d", "--remove_underscore"], "lowvram caption has none (the default: tags are written with spaces"),
    (["caption", "d", "--append_tags"], "lowvram caption's is --append"),
    (["caption", "d", "--min_length", "5"], "lowvram caption has none (--max-length bounds a caption)"),
])
def test_other_tools_names_get_the_lowvram_flag_of_the_command_typed(capsys, argv, hint):
    assert hint in unknown_option_hint(capsys, argv)


def test_a_training_flags_name_is_not_pointed_at_on_a_command_without_it(capsys):
    for argv in (["check-data", "sample", "--network_dim", "8"], ["check-data", "sample", "--token_warmup_step", "3"],
                 ["caption", "d", "--cache_latents"], ["merge", "a.safetensors", "--network_weights", "b.safetensors"],
                 ["check-data", "d", "--network_args"], ["check-data", "d", "--network_alpha", "4"]):
        err = unknown_option_hint(capsys, argv)  # (nor a closest spelling of another flag: merge's --rank, check-data's
        assert "(see" in err and "unknown option --" in err and "did you mean" not in err, err  # --alpha-mask)
        assert "kohya's" not in err and "not needed" not in err and "always" not in err, err
    assert "(did you mean --sampler?)" in unknown_option_hint(capsys, ["generate", "--prompt", "x", "--sample_sampler",
                                                                       "euler"])  # (not train's --sample-sampler)
    assert "did you mean --network?" in unknown_option_hint(capsys, ["train", "--network_arg"])  # (not --conv-rank)


def test_kohyas_spellings_of_values_are_read_as_lowvrams(capsys, tmp_path):
    spelled = {"AdamW8bit": "adamw8bit", "PagedAdamW8bit": "paged_adamw8bit", "DAdaptAdam": "dadaptation.DAdaptAdam",
               "adamw": "adamw", "torch.optim.RAdam": "torch.optim.RAdam"}
    for kohya, ours in spelled.items():
        assert build_config({"model": "tiny", "data": "sample", "optimizer": kohya}).optim.optimizer == ours
    config = build_config({"model": "tiny", "data": "sample", "save_precision": "float", "network": "LoHa",
                           "format": "safetensors"})  # (kohya's --save_model_as: its layout in that file)
    assert (config.output.save_precision, config.network.network, config.output.format) == ("fp32", "loha", "kohya")
    # fp32, as --save-precision and --unet-weights spell it, is accelerate's "no" (which kohya's configs use)
    assert build_config({"model": "tiny", "data": "sample", "mixed_precision": "fp32"}).training.mixed_precision == "no"
    sgd = "give --optimizer torch.optim.SGD --optimizer-arg nesterov=True --optimizer-arg momentum=0.9"
    for option, value, said in (("--optimizer", "SGDNesterov", sgd),
                                ("--network", "locon", "give --network lora --lora-layers full --conv-rank R"),
                                ("--network", "networks.lora", "kohya's network module: give --network lora"),
                                ("--network", "lycoris.kohya", "give its algo as --network (lora for locon, loha"),
                                ("--format", "ckpt", "lowvram writes .safetensors only"),
                                ("--optimizer", "adamw9bit", "names no optimizer: use one of adamw")):
        assert said in unknown_option_hint(capsys, ["plan", "--vram", "6GB", "--data", "sample", option, value])
    (tmp_path / "kohya.toml").write_text("network_dim = 8\n")  # kohya's name alone makes the file kohya's
    assert read_toml(tmp_path / "kohya.toml")["rank"] == 8
    (tmp_path / "run.toml").write_text('[optim]\noptimizer = "AdamW8bit"\n[output]\nsave_precision = "float"\n')
    assert read_toml(tmp_path / "run.toml") == {"optimizer": "adamw8bit", "save_precision": "fp32"}  # (the web UI's
    # form lists lowvram's names only)


def test_help_fits_an_80_column_terminal(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    wide = [line for line in out.splitlines() if len(line) > 80 and " | --no-" not in line]  # (a --x | --no-x
    assert not wide                                                                         # pair is one word)
    assert len(out.split("\n\n")[0].splitlines()) <= 3  # the usage: the common options, not 100 lines of all
    assert "One of: constant, constant_with_warmup, cosine," in " ".join(out.split())  # (its choices, no longer
    assert "--no-no-metadata" not in out                                                # in the usage line)
    parser = build_parser()
    assert parser.parse_args(["train", "--no-metadata"]).no_metadata is True
    assert parser.parse_args(["train", "--metadata"]).no_metadata is False  # (over a config file's no_metadata)


def test_a_resolution_written_with_an_x():
    assert build_config({"model": "tiny", "data": "sample", "resolution": "1024x1024"}).data.resolution == 1024


def test_a_kohya_flag_without_a_counterpart_says_what_to_do_instead(capsys):
    train_flags = {o for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                   for o in a.option_strings}
    for kohya, instead in WITHOUT_COUNTERPART.items():
        assert kohya not in train_flags and kohya not in KOHYA_FLAGS
        commands = build_parser()._subparsers._group_actions[0].choices
        other = re.search(r"lowvram ([a-z-]+)", instead)  # (another command's flags, where the line names it)
        flags = command_flags(other.group(1)) if other and other.group(1) in commands else train_flags
        assert all(flag in flags for flag in named_flags(instead)), (kohya, instead)  # (not a quoted prompt's)
    assert main(["train", "--model", "tiny", "--data", "sample", "--token_warmup_step", "10"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--token_warmup_step is kohya's: lowvram trains every caption whole" in error
    # (kohya's launch line for SD2, by habit: not a misspelling)
    assert main(["train", "--model", "tiny", "--data", "sample", "--v2"]) == 2
    assert "--v2 is kohya's: Stable Diffusion 2 is not a family lowvram trains" in capsys.readouterr().err


def test_a_warm_up_longer_than_most_of_the_run_is_warned_about(tmp_path, capsys):
    """The character preset's 100 warm-up steps with --max-steps 10 would keep the learning rate near zero."""
    printed = io.StringIO()
    train(run_config(output=str(tmp_path / "a"), scheduler="cosine", warmup_steps=100, max_steps=3),
          Console(file=printed, width=300))
    assert "--warmup-steps 100 is most of this run's 3 steps: the learning rate never reaches --lr" in printed.getvalue()
    # the constant schedule has no warm-up at all; said with the options, so that --dry-run says it too (it did not)
    from lowvram.cli import main

    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "c"), "--warmup-steps", "2",
            "--scheduler-cycles", "2", "--dry-run"]
    capsys.readouterr()
    assert main(argv) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "warning: --warmup-steps 2 has no effect with --scheduler constant" in said
    assert "warning: --scheduler-cycles 2 has no effect with --scheduler constant" in said
    restarts = io.StringIO()  # (20 cycles in 10 steps: the rate held at --lr throughout, unsaid)
    train(run_config(output=str(tmp_path / "r"), scheduler="cosine_with_restarts", scheduler_cycles=3, max_steps=4),
          Console(file=restarts, width=300))
    assert ("--scheduler-cycles 3 leaves each cycle under 2 of the 4 steps after the warm-up, so the rate barely "
            "decays (or not at all) before each restart; lower --scheduler-cycles (say 1)") in restarts.getvalue()
    past = io.StringIO()  # (a warm-up past the run's end, said by its own warning: cycles "under 2 of the -58 steps")
    train(run_config(output=str(tmp_path / "p"), scheduler="cosine_with_restarts", scheduler_cycles=3, max_steps=2,
                     warmup_steps=60), Console(file=past, width=300))
    assert "never reaches" in past.getvalue() and "--scheduler-cycles" not in past.getvalue()
    quiet = io.StringIO()
    train(run_config(output=str(tmp_path / "b"), scheduler="cosine", warmup_steps=1, max_steps=3),
          Console(file=quiet, width=300))
    assert "--warmup-steps" not in quiet.getvalue() and "--scheduler-cycles" not in quiet.getvalue()


def test_a_toml_with_an_unknown_key_still_reports_its_wrong_values(tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text('[network]\nrnak = 4\nrank = 0\nnetwork = "lorra"\n[optim]\nscheduler = "cosin"\n')
    with pytest.raises(LowvramError) as refused:
        read_toml(config_file)
    lines = str(refused.value).splitlines()
    assert any("unknown key 'rnak'" in line for line in lines)
    for wrong in ("--rank: must be > 0", "--network: 'lorra' is not one of", "--scheduler: 'cosin' is not one of"):
        assert any(wrong in line for line in lines), (wrong, lines)
    assert not any("--model" in line or "--data" in line for line in lines)  # left to other layers: not wrong here


def test_a_user_without_a_home_is_told_where_to_keep_the_caches(tmp_path, monkeypatch, capsys):
    """`docker run --user 1234`, or cron's `env -i` for a user of no passwd entry: Path.home() raises, which was a
    traceback in train and doctor, and XDG_CACHE_HOME given did not help."""
    import pathlib

    def no_home(cls):  # (what Python raises there: no HOME, no passwd entry)
        raise RuntimeError("Could not determine home directory.")

    for name in ("HOME", "XDG_CACHE_HOME", "LOWVRAM_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pathlib.Path, "home", classmethod(no_home))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "tiny", "--data", "sample", "--max-steps", "1"]) == 2
    assert ("error: no home folder to keep the caches in (this user has none); give --cache-dir, LOWVRAM_CACHE_DIR or "
            "XDG_CACHE_HOME a folder you can write") in " ".join(capsys.readouterr().err.split())
    assert main(["doctor"]) == 0
    assert "no home folder to keep the caches in" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["train", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--output", "out"]) == 0
    assert (tmp_path / "xdg" / "lowvram").is_dir()


def test_doctor_speaks_in_words_and_says_what_auto_would_choose(capsys):
    assert main(["doctor"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "None" not in out and "False" not in out
    assert "--auto, SDXL at 1024" in out and "bitsandbytes" in out
    assert "│ cache " in out  # where the caches are, and how big: the way to lowvram cache
    assert re.search(r"host RAM │ \d+\.\d GiB, \d+\.\d GiB of it free now; (no swap|swap \d)", out)  # (swap: --ram)
    assert re.search(r"the next run rebuilds if removed \(lowvram cache shows and prunes it\); \S+ \S+ free on its "
                     r"disk$", _cache_line(default_cache_dir()))  # (the cache's disk: a lab's home is a small quota)
    # as JSON, for a lab's dashboard: the figures in bytes, and each line of the table (it had none)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["device"] == "cpu" and report["machine"]["host_ram_bytes"] > 2**30
    assert report["machine"]["cache_dir"] == str(default_cache_dir()) and report["report"]["GPU"].startswith("none: ")
    assert "Training runs on the CPU in fp32" in report["report"]["GPU"]
    assert main(["doctor", "--profiles", "--json"]) == 0
    t4 = next(p for p in json.loads(capsys.readouterr().out)["profiles"] if p["name"] == "colab-t4")
    assert t4["bf16"] is False and t4["vram_bytes"] >= 15 * 2**30
    t4 = load_profile("colab-t4")  # the same lines for a card, through the real planner
    assert "fp16 only" in _gpu_line(t4)
    assert _auto_line(t4, "sd15").startswith("fp16 adamw (peak")  # seen in bf16: no fp16 GPU result yet
    assert "mixed precision fp32 (no bf16, and fp16 gives NaN" in _gpu_line(load_profile("gtx-1660-6gb"))
    sd15 = _auto_line(hardware_for(None, "8GB", "16GB"), "sd15")
    assert re.fullmatch(r"\S+( ckpt)? \S+ \(peak \d+\.\d GiB of 8\.0 GiB free\)", sd15), sd15


def test_a_path_with_a_space_is_printed_in_one_colour():
    """rich's highlighter coloured a path up to its first space, in a terminal: it read as ending there."""
    from lowvram.console import Console

    terminal = Console(force_terminal=True, file=io.StringIO(), width=200)
    terminal.print("[green]saved[/] /tmp/出力 中断/中断テスト.safetensors (step 12, 0.5 GiB)")
    said = terminal.file.getvalue()
    assert "\x1b[32m" in said and "\x1b[" not in said.split("saved", 1)[1].split("\x1b[0m", 1)[1], repr(said)


def test_no_gpu_is_said_with_its_cause(capsys, monkeypatch):
    import torch

    from lowvram.hardware import no_gpu_reason

    if torch.cuda.is_available():
        pytest.skip("the causes of finding no GPU")
    # a CPU-only PyTorch (pip's default wheel on Windows) is the usual cause; "none" alone left it to be guessed
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cause = (f"PyTorch {torch.__version__} is a CPU-only build; pytorch.org/get-started gives the command" if
             torch.version.cuda is None else "the NVIDIA driver is missing, or older than its CUDA")
    assert cause in no_gpu_reason()
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["GPU"].startswith(f"none: {no_gpu_reason()}. Training")
    for hidden in ("", "-1"):  # a launcher's or a shared box's setting hides every card
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert no_gpu_reason() == f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU from this process"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert cause in no_gpu_reason()


def test_the_test_command_shows_progress_per_file_and_the_readme_says_how_long_it_takes():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    command = readme.split("<!-- test command", 1)[1].split("```bash\n", 1)[1].splitlines()[0]
    assert "pytest" in command and " -q" not in command and "--durations" in command  # slowest named
    assert " -n " not in command or " -v" in command  # file by file: pytest-xdist workers name each test's file
    assert re.search(r"take about \d+ minutes\s+on the 2-core CI machine", readme)
    assert '-m "not slow"' in readme


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing, on purpose
def test_a_ctrl_c_that_a_finalizer_swallows_while_the_libraries_load_is_still_acted_on():
    """Python prints a KeyboardInterrupt raised inside a finalizer as 'Exception ignored' and goes on; the run
    must not go on training. A real SIGINT lands in a real __del__ here."""
    from lowvram.cli import remembered_interrupt

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here, inside __del__

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a pytest-xdist worker
    with remembered_interrupt() as interrupted:
        obj = Finalized()
        del obj  # the KeyboardInterrupt raised in __del__ is swallowed
    assert interrupted == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_names_a_legacy_code_page_cannot_hold_are_written_escaped_not_a_crash(sample_data, tmp_path):
    """Windows writes redirected output in its ANSI code page (cp1252): a CJK folder name ended every command in a
    UnicodeEncodeError traceback (train's after the LoRA was saved)."""
    folder = tmp_path / "data" / "5_ロラ"
    shutil.copytree(sample_data / "5_lvshape", folder)
    done = subprocess.run([sys.executable, "-m", "lowvram", "check-data", str(folder.parent)], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "cp1252"}, timeout=300, check=False)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr[-2000:]
    assert b"5_\\u30ed\\u30e9" in done.stdout  # the name, escaped


def test_run_in_an_ipython_kernel_the_command_leaves_its_signals_as_they_were():
    """`%run -m lowvram ...` in a notebook: the kernel went on ignoring SIGTERM (the handler a process sets as it
    ends), so that Jupyter's shutdown could no longer stop it. A command of its own process still sets it."""
    code = ("import builtins, signal, sys\nbuiltins.__IPYTHON__ = {kernel}\nfrom lowvram.__main__ import entry\n"
            "sys.argv = ['lowvram', '--version']\ntry:\n    entry()\nexcept SystemExit:\n    pass\n"
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)")
    for kernel, left_default in ((True, "True"), (False, "False")):
        done = subprocess.run([sys.executable, "-c", code.format(kernel=kernel)], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.stdout.strip().splitlines()[-1] == left_default, done.stderr[-2000:]


def test_a_second_sigterm_as_the_interrupted_run_ends_still_exits_130(tmp_path):
    """The first SIGTERM saved the checkpoint and said so; one sent again as the process ended (its handlers
    restored, torch tearing down) killed it the default way, exit 143, which a driver took for a crash."""
    metrics = tmp_path / "out" / "metrics.jsonl"
    run = subprocess.Popen([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                            "--output", str(tmp_path / "out"), "--max-steps", "100000", "--cache-dir",
                            str(tmp_path / "cache")], stdout=(tmp_path / "out.log").open("w"), stderr=subprocess.PIPE,
                           text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and '"loss"' in metrics.read_text()):
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    said = ""
    for line in run.stderr:
        said += line
        if "interrupted at step" in line:  # (its last words: the checkpoint is saved)
            run.send_signal(signal.SIGTERM)
            break
    said += run.stderr.read()
    assert run.wait(timeout=120) == 130, said
    assert (tmp_path / "out" / "checkpoints").is_dir()
    log = (tmp_path / "out.log").read_text()  # what the first one said, in a log: no empty line, no Ctrl-C to press
    assert "\nstopping after this step and saving a checkpoint (send the same signal again to stop at once)\n" in log
    assert "\n\n" not in log


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX's")
def test_a_second_hang_up_goes_on_saving_and_the_log_says_what_stops_at_once():
    """A dropped ssh connection hangs up twice: the second SIGHUP is no one asking to stop at once (which kept
    nothing), so the run's log (a nohup'd one's, a tee'd one's) does not tell to send it again; one landing after
    the steps (the run's last words) ended it, killed by the hang-up."""
    said = ("import os, signal, time\nfrom lowvram.cli import stop_signals_interrupt\n"
            "from lowvram.train.progress import StopOnSignal\nsignal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
            "with stop_signals_interrupt(), StopOnSignal() as stop:\n"
            "    for _ in range(2):\n        os.kill(os.getpid(), signal.SIGHUP)\n        time.sleep(0.2)\n"
            "    print('went on after', stop.received == signal.SIGHUP)\n"
            "os.kill(os.getpid(), signal.SIGHUP)\ntime.sleep(0.2)\nprint('and after the steps')")
    done = subprocess.run([sys.executable, "-c", said], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.splitlines() == [("stopping after this step and saving a checkpoint (press Ctrl-C or send SIGTERM "
                                         "to stop at once)"), "went on after True", "and after the steps"]


def test_an_option_given_twice_is_said_and_the_last_counts(capsys, monkeypatch):
    """A second --sample-prompt-file replaced the first unsaid (the last counts, as argparse takes it); a number given
    again is a script's override of its base flags, unsaid."""
    args = build_parser().parse_args(["train", "--sample-prompt-file", "a.txt", "--sample-prompt-file", "b.txt",
                                      "--rank", "8", "--lr", "1e-4"])
    assert (args.sample_prompt_file, args.rank) == ("b.txt", "8")
    assert capsys.readouterr().err == "note: --sample-prompt-file given twice: b.txt counts, not a.txt\n"
    build_parser().parse_args(["train", "--max-steps", "2", "--max-steps", "3"])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "1")  # under accelerate launch the main process alone says it
    monkeypatch.setenv("WORLD_SIZE", "2")
    build_parser().parse_args(["train", "--data", "a", "--data", "b"])
    assert capsys.readouterr().err == ""
