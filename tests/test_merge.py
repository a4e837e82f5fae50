"""FILE:WEIGHT, as `lowvram merge` and `generate --lora` read it: the weight after the last ':' where it is a finite
number, a one-line error naming the file where it is not; an existing file (colons in its name, a Windows drive)
is always the file."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file, save_file

from lowvram.cli import main
from lowvram.errors import LowvramError
from lowvram.option_values import parse_source
from lowvram.train.loop import train


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    return train(run_config(output=str(out), max_steps=1)).lora_path


def test_a_weight_is_read_after_the_last_colon_and_an_existing_file_wins(lora, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_source("style.safetensors:0.6") == (Path("style.safetensors"), 0.6)
    assert parse_source("style.safetensors:-0.8", 0.3) == (Path("style.safetensors"), -0.8)
    assert parse_source("style.safetensors", 0.3) == (Path("style.safetensors"), 0.3)  # none given: the default
    assert parse_source("C:\\loras\\style.safetensors") == (Path("C:\\loras\\style.safetensors"), 1.0)
    assert parse_source("C:\\loras\\style.safetensors:0.5") == (Path("C:\\loras\\style.safetensors"), 0.5)
    assert parse_source("D:/loras/style.safetensors") == (Path("D:/loras/style.safetensors"), 1.0)
    assert parse_source("v1:style.safetensors") == (Path("v1:style.safetensors"), 1.0)  # a name: not found later
    for name in ("lora:0.5", "lora:abc", "lora:nan"):  # files named as FILE:WEIGHT would be
        shutil.copy(lora, tmp_path / name)
        assert parse_source(name, 0.7) == (Path(name), 0.7)
    assert parse_source("lora:0.5:0.25") == (Path("lora:0.5"), 0.25)  # and takes its own weight
    # ComfyUI's model and clip strengths: was 'file not found: style.safetensors:0.8'
    with pytest.raises(LowvramError, match=r"^style.safetensors has two weights \(0.8:0.2\); one weight applies to "
                                           r"the U-Net and the text encoders alike here: write style.safetensors:0.8$"):
        parse_source("style.safetensors:0.8:0.2")
    assert parse_source("v2:style.safetensors:0.5") == (Path("v2:style.safetensors"), 0.5)


@pytest.mark.parametrize("weight, says", [("abc", "is not a number"), ("", "is not a number"),
                                          ("nan", "is not a finite number"), ("inf", "is not a finite number"),
                                          ("-inf", "is not a finite number")])
def test_a_weight_that_is_no_finite_number_is_named(weight, says):
    with pytest.raises(LowvramError) as error:
        parse_source(f"base.safetensors:{weight}")
    assert str(error.value) == (f"weight '{weight}' of base.safetensors {says}; write FILE:WEIGHT, e.g. "
                                "base.safetensors:0.8")


def test_merge_refuses_weights_that_are_no_numbers_in_one_line_each(lora, tmp_path, capsys):
    out = tmp_path / "merged.safetensors"
    for extra in ([], ["--model", "tiny"]):  # merging into a model reads FILE:WEIGHT too
        assert main(["merge", f"{lora}:abc", f"{lora}:nan", *([] if extra else ["--rank", "4"]), *extra,
                     "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0] == (f"lowvram merge: error: weight 'abc' of {lora} is not a number; write FILE:WEIGHT, e.g. "
                          f"{lora}:0.8")
        assert len(err) == 2, err  # merge collects every problem, into a model too; each is one line
        assert not out.exists()
    assert main(["merge", f"{lora}:0.5", "--rank", "2", "--output", str(out)]) == 0  # a number still merges
    assert load_file(str(out))


def test_a_merge_that_adds_nothing_is_refused(lora, tmp_path, capsys):
    """A LoRA merged with itself at -1, or given a weight of 0, wrote a LoRA of zeros ("kept 98.0%" of float
    error's residue) that still named the trigger words: a LoRA that does nothing, said as a good merge."""
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(lora), f"{lora}:-1", "--rank", "4", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"lowvram merge: error: the LoRAs cancel out ({lora.name}:1, "
                                               f"{lora.name}:-1): their weighted sum changes nothing; check the "
                                               "weights' signs")
    assert main(["merge", f"{lora}:0", "--rank", "4", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"lowvram merge: error: {lora}:0: a weight of 0 adds nothing to the "
                                               "merge; drop the file, or give it a weight")
    assert not out.exists()
    zeros = tmp_path / "untrained.safetensors"  # a save before training: its up weights zeros, no sign to check
    tensors = load_file(str(lora))
    save_file({key: torch.zeros_like(t) if key.endswith("lora_up.weight") else t for key, t in tensors.items()},
              str(zeros))
    assert main(["merge", str(zeros), "--rank", "4", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("every update is zero (a LoRA saved before training, its up "
                                                    "weights zeros): merging changes nothing")
    assert main(["merge", str(lora), f"{lora}:-0.5", "--rank", "4", "--output", str(out)]) == 0  # half is left


def test_a_resize_or_merge_of_a_bare_sdxl_lora_is_filed_as_sdxl(tmp_path):
    """AUTOMATIC1111 files a LoRA with any metadata and no ss_base_model_version as SD1's, hiding it beside an SDXL
    model: an SDXL file without metadata (as many shared ones are) came out of resize and merge so."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lowvram.models.families import FAMILIES

    lora = train(run_config(model="tiny-sdxl", output=str(tmp_path / "run"), max_steps=1, train_text_encoder=True,
                            rank=4)).lora_path
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(lora)), str(bare))  # its tensors alone
    resized, merged = tmp_path / "resized.safetensors", tmp_path / "merged.safetensors"
    assert main(["resize", str(bare), "--rank", "2", "--output", str(resized)]) == 0
    assert main(["merge", str(bare), f"{bare}:0.5", "--rank", "2", "--output", str(merged)]) == 0
    for written in (resized, merged):
        with safe_open(str(written), "pt") as f:
            metadata = f.metadata()
        assert (metadata["ss_base_model_version"], metadata["ss_v2"]) == (FAMILIES["sdxl"].base_model_version,
                                                                          "False"), written


def test_a_pickled_lora_named_as_one_gets_the_command_that_converts_it(tmp_path, capsys):
    """resize and merge said to rename old.pt "old.ckpt" and convert it to old.pt (a .ckpt: to itself), which every
    command then refused as a pickle again."""
    import torch

    for name in ("old.pt", "old.ckpt"):
        torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / name)
        for argv in (["resize", str(tmp_path / name), "--rank", "1"],
                     ["merge", str(tmp_path / name), "--rank", "1", "--output", str(tmp_path / "m.safetensors")]):
            assert main(argv) == 2
            said = capsys.readouterr().err
            assert f"{tmp_path / name} is a pickle file, which can run arbitrary code" in said, said
            assert said.rstrip().endswith(f"{tmp_path / name} {tmp_path / 'old.safetensors'}"), said
