"""`lowvram resize`: a LoRA file at a lower rank (kohya's resize_lora.py), each layer's update the best
approximation at its new rank, loadable by lowvram's reader and diffusers as the original is."""

import json
import re
import sys

import numpy as np
import pytest
import torch
from conftest import assert_kohya_hashes, run_config
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lowvram.cli import main
from lowvram.errors import LowvramError
from lowvram.models.loading import load_model
from lowvram.resize import kept_rank, resize_pair
from lowvram.train.loop import train

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_each_rule_keeps_the_least_rank_that_meets_it():
    values = torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    assert kept_rank(values, 4, "sv_ratio", 3) == 2  # above 8 / 3
    assert kept_rank(values, 4, "sv_fro", 0.9) == 2  # (64 + 16) / 85 >= 0.81
    assert kept_rank(values, 4, "sv_fro", 0.95) == 2  # the norm's share, not its square's: sqrt(80 / 85) >= 0.95
    assert kept_rank(values, 4, "sv_cumulative", 0.9) == 3  # 14 / 15 >= 0.9
    assert kept_rank(values, 4, "sv_fro", 1.0) == 4 and kept_rank(values, 1, "sv_fro", 1.0) == 1  # --rank caps it
    assert kept_rank(values, 3, None, None) == 3


@pytest.mark.parametrize("down_shape, up_shape", [((6, 40), (30, 6)), ((6, 8, 3, 3), (12, 6, 1, 1))])
def test_a_resized_pair_is_the_best_approximation_at_its_rank(down_shape, up_shape):
    generator = torch.Generator().manual_seed(0)
    down, up = torch.randn(down_shape, generator=generator), torch.randn(up_shape, generator=generator)
    update = up.flatten(1).double() @ down.flatten(1).double()
    same_down, same_up, kept = resize_pair(down, up, 6, None, None)
    assert torch.allclose(same_up.flatten(1).double() @ same_down.flatten(1).double(), update, atol=1e-4)
    assert kept == pytest.approx(1.0)
    new_down, new_up, kept = resize_pair(down, up, 3, None, None)
    assert new_down.shape == (3, *down_shape[1:]) and new_up.shape == (up_shape[0], 3, *up_shape[2:])
    values = torch.linalg.svdvals(update)
    error = torch.linalg.norm(update - new_up.flatten(1).double() @ new_down.flatten(1).double())
    assert float(error) == pytest.approx(float(values[3:].square().sum().sqrt()), rel=1e-4)  # Eckart-Young
    assert kept == pytest.approx(float((values[:3].square().sum() / values.square().sum()).sqrt()), rel=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return train(run_config(output=str(out), max_steps=3, rank=8, alpha=4, lora_layers="full", lr=1e-2)).lora_path


def updates(path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path))
    bases = {key.split(".")[0] for key in tensors if key.endswith("lora_down.weight")}
    pairs = {base: (tensors[f"{base}.lora_down.weight"].flatten(1).double(),
                    tensors[f"{base}.lora_up.weight"].flatten(1).double(), float(tensors[f"{base}.alpha"]))
             for base in bases}
    return {base: alpha / down.shape[0] * up @ down for base, (down, up, alpha) in pairs.items()}


def test_a_resized_file_holds_the_truncated_updates_and_says_so(trained, tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    assert main(["resize", str(trained), "--rank", "2", "--output", str(out)]) == 0
    assert "rank 8 -> 2" in capsys.readouterr().out
    before, after = updates(trained), updates(out)
    assert before.keys() == after.keys() and len(before) > 20
    for base, update in before.items():
        u, s, vh = torch.linalg.svd(update, full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        assert torch.allclose(after[base], best, atol=1e-6 + 1e-3 * float(s[0])), base
    meta = safe_open(str(out), framework="pt").metadata()
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("2", "1")  # alpha/rank 4/8 kept
    assert "resized from rank 8 by lowvram resize (rank 2)" in meta["ss_training_comment"]
    assert load_file(str(out))[next(iter(after)) + ".lora_down.weight"].dtype == torch.float16  # the file's dtype
    # its recipe at its new rank: `train --config` on it trained rank 8, and refused it as --network-weights
    network = tomllib.loads(meta["lowvram.config"])["network"]
    assert (network["rank"], network["alpha"], network["conv_rank"], network["conv_alpha"]) == (2, 1.0, 2, 1.0)
    assert main(["plan", "--config", str(out), "--network-weights", str(out), "--vram", "6GB"]) == 0
    assert main(["resize", str(trained), "--rank", "4", "--dynamic", "sv_fro", "--dynamic-param", "0.9", "--output",
                 str(tmp_path / "dynamic.safetensors")]) == 0  # (no one rank trains it: no recipe)
    assert "lowvram.config" not in safe_open(str(tmp_path / "dynamic.safetensors"), framework="pt").metadata()
    capsys.readouterr()  # kohya's --verbose: each layer's rank and share (its hint said resize printed them: it did not)
    assert main(["resize", str(trained), "--rank", "2", "--output", str(tmp_path / "v.safetensors"), "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(before) + 1 and lines[-1].startswith(f"{tmp_path / 'v.safetensors'}: ")
    assert all(re.fullmatch(r"lora_(unet|te)_\w+: rank 2, kept \d+\.\d% of its update's Frobenius norm", line)
               for line in lines[:-1]), lines[:3]


def test_a_file_resized_at_its_own_rank_renders_the_same_in_lowvram_and_diffusers(trained, tmp_path, capsys):
    same = tmp_path / "same.safetensors"
    assert main(["resize", str(trained), "--rank", "8", "--output", str(same), "--save-precision", "fp32"]) == 0
    assert "rank 8 -> 8" in capsys.readouterr().out.replace("\n", " ")
    assert {tensor.dtype for tensor in load_file(str(same)).values()} == {torch.float32}  # the alphas too
    assert main(["resize", str(trained), "--rank", "8", "--output", str(tmp_path / "x.safetensors")]) == 0
    assert "nothing was cut: each layer was at that rank or below already" in capsys.readouterr().out
    # a higher rank: refused (it wrote <name>-r16.safetensors, of rank 8)
    assert main(["resize", str(trained), "--rank", "16"]) == 2 and not trained.with_name(f"{trained.stem}-r16.safetensors").exists()
    assert (f"{trained}: every linear layer is at rank 8 or below already, so --rank 16 cuts nothing (resize lowers ranks, "
            "never raises them); give a rank under 8") in capsys.readouterr().err
    argv = ["generate", "--model", "tiny", "--prompt", "lvshape, a red circle", "--steps", "3", "--seed", "1"]
    images = []
    for lora, name in ((trained, "original"), (same, "resized")):
        assert main([*argv, "--lora", str(lora), "--output", str(tmp_path / f"{name}.png")]) == 0
        images.append(np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.float32))
    assert np.abs(images[0] - images[1]).max() <= 2  # 8-bit pixels; the factors differ, the updates do not
    dynamic = tmp_path / "dynamic.safetensors"
    assert main(["resize", str(trained), "--rank", "8", "--dynamic", "sv_fro", "--dynamic-param", "0.9",
                 "--output", str(dynamic)]) == 0  # (ranks 1 to 6 here: alphas of six sizes, were they kept)
    meta = safe_open(str(dynamic), framework="pt").metadata()
    ranks = {t.shape[0] for k, t in load_file(str(dynamic)).items() if k.endswith("lora_down.weight")}
    assert len(ranks) > 1 and meta["ss_network_dim"] == "Dynamic"
    assert main(["resize", str(trained), "--rank", "8", "--dynamic", "sv_fro", "--dynamic-param", "0.9"]) == 0
    assert trained.with_name(f"{trained.stem}-r8-sv_fro0.9.safetensors").is_file()  # (it was -r8, a fixed rank's name)
    ratio = tmp_path / "ratio.safetensors"  # a ratio above 1, unlike the shares the other rules keep
    assert main(["resize", str(trained), "--rank", "8", "--dynamic", "sv_ratio", "--dynamic-param", "4",
                 "--output", str(ratio)]) == 0
    assert {t.shape[0] for k, t in load_file(str(ratio)).items() if k.endswith("lora_down.weight")} <= set(range(1, 9))
    assert_read_alike_by_diffusers_and_lowvram(dynamic)  # layers of differing rank, and of one alpha
    again = tmp_path / "again.safetensors"  # a fixed rank of it: its layers' scales differed, diffusers misread it
    assert main(["resize", str(dynamic), "--rank", "3", "--output", str(again)]) == 0
    assert_read_alike_by_diffusers_and_lowvram(again)
    # trained on from, its ranks were asked for one after another, in a loop: refused, naming the ways on
    with pytest.raises(LowvramError) as error:
        run_config(network_weights=str(dynamic))
    assert str(error.value) == (
        f"--network-weights: {dynamic} holds layers of several ranks ({', '.join(map(str, sorted(ranks)))}), as a "
        "--dynamic resize or a merge writes them, and lowvram trains on from one rank per block only: train on from "
        f"the file it was made from, or fuse it into the model (lowvram merge --model MODEL {dynamic} --output "
        "fused.safetensors) and train a new LoRA on that")
    fixed = tmp_path / "fixed.safetensors"  # a fixed rank keeps each kind's alpha: it continues training as it was
    assert main(["resize", str(trained), "--rank", "4", "--conv-rank", "2", "--output", str(fixed)]) == 0
    assert {float(t) for k, t in load_file(str(fixed)).items() if k.endswith(".alpha")} == {2.0, 1.0}
    meta = safe_open(str(fixed), framework="pt").metadata()  # as kohya's resize writes a LoCon's: no "Dynamic"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2")
    assert {k: json.loads(meta["ss_network_args"])[k] for k in ("conv_dim", "conv_alpha")} == {"conv_dim": "2",
                                                                                               "conv_alpha": "1"}
    assert meta["ss_training_comment"].endswith("(rank 4 (conv: 2))")


def assert_read_alike_by_diffusers_and_lowvram(path):
    """diffusers' reader of kohya files reads layers of differing alpha at the most common one: a file of
    differing ranks keeps one alpha, each layer's scale folded into its up weight, so diffusers reads what
    lowvram's reader (and ComfyUI's, A1111's) reads."""
    from lowvram.adapters.lora_files import load_kohya
    from lowvram.adapters.networks import fuse_adapters

    assert len({float(t) for k, t in load_file(str(path)).items() if k.endswith(".alpha")}) == 1
    plain, ours, theirs = (load_model("tiny", None, dtype=torch.float32) for _ in range(3))
    load_kohya(ours, path)
    fuse_adapters(ours.unet, 1.0)
    theirs.pipeline.load_lora_weights(str(path))
    theirs.pipeline.fuse_lora()
    theirs.pipeline.unload_lora_weights()
    before, changed = plain.unet.state_dict(), 0
    for name, weight in theirs.unet.state_dict().items():  # each layer's update, as each reader applies it
        ours_delta, their_delta = ours.unet.state_dict()[name] - before[name], weight - before[name]
        if ours_delta.abs().max() > 0:
            changed += 1
            torch.testing.assert_close(their_delta, ours_delta, rtol=0, atol=1e-4 * float(ours_delta.abs().max()))
    assert changed > 0


def test_what_cannot_be_resized_is_one_line(trained, tmp_path, capsys):
    lokr = tmp_path / "lokr.safetensors"
    save_file({"lora_unet_x.lokr_w1": torch.ones(2, 2), "lora_unet_x.lokr_w2": torch.ones(2, 2)}, str(lokr))
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"")
    cut = tmp_path / "cut.safetensors"  # a download that stopped: safetensors' "incomplete metadata", as info says it
    cut.write_bytes(trained.read_bytes()[:30000])
    header_end = 8 + int.from_bytes(trained.read_bytes()[:8], "little")
    tensors_cut = tmp_path / "tensors-cut.safetensors"
    tensors_cut.write_bytes(trained.read_bytes()[:header_end + 100])
    for argv, says in (([str(lokr), "--rank", "2"], "is a LoKr file"),
                       ([str(cut), "--rank", "2"], "(truncated: its header alone needs "),
                       ([str(tensors_cut), "--rank", "2"], (f"(truncated: its tensors need {trained.stat().st_size} "
                                                           f"bytes, the file has {header_end + 100})")),
                       ([str(tmp_path / "none.safetensors"), "--rank", "2"], "file not found"),
                       ([str(trained), "--rank", "2", "--dynamic", "sv_ratio", "--dynamic-param", "0.5"],
                        "--dynamic-param: sv_ratio keeps the values above the largest / PARAM; give more than 1"),
                       ([str(trained), "--rank", "2", "--dynamic", "sv_fro"], "--dynamic sv_fro: give --dynamic-param"),
                       ([str(trained), "--rank", "2", "--dynamic", "sv_ratio", "--dynamic-param", "nan"],
                        "--dynamic-param: must be a finite number, got nan"),  # (it cut every layer to rank 1)
                       ([str(trained), "--rank", "2", "--output", str(taken)], "exists; add --overwrite"),
                       ([str(trained), "--rank", "0"], "--rank, --conv-rank: must be 1 or more"),
                       # (its convolutions cut, it was named -r32: a rank-8 file)
                       ([str(trained), "--rank", "32", "--conv-rank", "2"],
                        ("--rank 32, above its linear layers' 8, cuts nothing there (resize lowers ranks, never raises "
                        "them); give --rank 8 --conv-rank 2 to cut the convolutions alone"))):
        assert main(["resize", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert main(["merge", str(lokr), str(trained), "--rank", "2"]) == 2  # (fusing into a model takes any LoRA)
    assert capsys.readouterr().err.strip().endswith(
        "lower-rank pair; lowvram merge --model MODEL fuses it into a model instead")


def test_resized_and_merged_files_say_what_they_are_as_kohyas_scripts_write_it(tmp_path):
    """Files past 1 MiB (where kohya's legacy hash reads) of an SDXL LoRA, one written by an earlier lowvram
    (modelspec.implementation "diffusers"): what the resized and merged files say, hashes and modelspec."""
    sources = []
    # only the first says it is for a zero-terminal-SNR v-prediction model: the merge cannot say that of the sum
    first = {"modelspec.title": "First", "ss_zero_terminal_snr": "True", "modelspec.prediction_type": "v"}
    for name, spec in (("first", first), ("second", {})):
        tensors = {}
        for layer in ("lora_unet_input_blocks_4_1_proj_in", "lora_unet_output_blocks_0_1_proj_out"):
            tensors |= {f"{layer}.lora_down.weight": torch.randn(8, 20480),
                        f"{layer}.lora_up.weight": torch.randn(640, 8), f"{layer}.alpha": torch.tensor(8.0)}
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "8",
                    "ss_base_model_version": "sdxl_base_v1-0",
                    "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
                    "modelspec.implementation": "diffusers", "modelspec.resolution": "1024x1024",
                    "sshs_model_hash": "0" * 64} | spec
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata)
        sources.append(tmp_path / f"{name}.safetensors")
    resized, merged = tmp_path / "resized.safetensors", tmp_path / "merged.safetensors"
    assert main(["resize", str(sources[0]), "--rank", "4", "--dynamic", "sv_fro", "--dynamic-param", "1",
                 "--save-precision", "fp32", "--output", str(resized)]) == 0
    meta = assert_kohya_hashes(resized)
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("Dynamic", "Dynamic")  # kohya's, for any rule
    assert meta["modelspec.title"] == "First"
    assert main(["merge", str(sources[0]), f"{sources[1]}:0.5", "--rank", "4", "--save-precision", "fp32",
                 "--output", str(merged)]) == 0
    meta = assert_kohya_hashes(merged)
    assert {key: value for key, value in meta.items() if key.startswith("modelspec.") and key != "modelspec.date"} == {
        "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models", "modelspec.title": "merged",
        "modelspec.resolution": "1024x1024", "modelspec.merged_from": "First, second"}
    assert meta["modelspec.date"] and meta["ss_network_dim"] == "4" and "ss_zero_terminal_snr" not in meta
    # a file of no modelspec (kohya's, Civitai's) leaves the other's model unsaid, not unknown (no modelspec at all)
    save_file(load_file(sources[1]), sources[1], {"ss_network_module": "networks.lora", "ss_network_dim": "8"})
    assert main(["merge", str(sources[0]), str(sources[1]), "--rank", "4", "--output", str(merged), "--overwrite"]) == 0
    meta = assert_kohya_hashes(merged)
    assert (meta["modelspec.architecture"], meta["ss_base_model_version"], meta["modelspec.merged_from"]) == (
        "stable-diffusion-xl-v1-base/lora", "sdxl_base_v1-0", "First, second")


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    """Another LoRA on the same model: attention layers only, so some layers are the first one's alone."""
    out = tmp_path_factory.mktemp("second")
    return train(run_config(output=str(out), max_steps=3, rank=4, alpha=4, lora_layers="attn", lr=2e-2,
                            seed=7)).lora_path


def test_merged_files_hold_the_weighted_sum_of_their_updates(trained, second, tmp_path, capsys):
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", f"{trained}:0.7", f"{second}:-0.5", "--rank", "12", "--output", str(merged),
                 "--save-precision", "fp32"]) == 0
    assert "rank 12 -> 12" in capsys.readouterr().out  # the sum's rank at most 8 + 4: kept whole
    first, other, result = updates(trained), updates(second), updates(merged)
    assert set(other) < set(first) and result.keys() == first.keys()
    for base, update in result.items():
        expected = 0.7 * first[base] + (-0.5 * other[base] if base in other else 0)
        assert torch.allclose(update, expected, atol=1e-5 * float(expected.abs().max()) + 1e-7), base
    meta = safe_open(str(merged), framework="pt").metadata()
    assert meta["ss_training_comment"] == (f"merged by lowvram merge from {trained.name} x0.7, {second.name} x-0.5 "
                                           "(rank 12)")
    assert meta["ss_base_model_version"] == safe_open(str(trained), framework="pt").metadata()["ss_base_model_version"]
    # what LoRA managers show: the sources' trigger words and tags (kohya's merge, and lowvram's, wrote neither)
    sources = [safe_open(str(path), framework="pt").metadata() for path in (trained, second)]
    assert sources[0]["modelspec.trigger_phrase"] == "lvshape" == meta["modelspec.trigger_phrase"]
    assert json.loads(meta["ss_tag_frequency"]) == {  # (the second, subtracted, brings none)
        f"{trained.stem}/{folder}": counts for folder, counts in json.loads(sources[0]["ss_tag_frequency"]).items()}
    zkw = tmp_path / "zkw.safetensors"  # another trigger joins; a LoRA subtracted brings none of its words
    save_file(load_file(str(second)), str(zkw), sources[1] | {"modelspec.trigger_phrase": "zkw, lvshape"})
    for weights, said in ((("1", "1", "1"), "lvshape, zkw"), (("1", "-1", "1"), "lvshape")):  # (each word once)
        assert main(["merge", *(f"{path}:{w}" for path, w in zip((trained, zkw, second), weights)), "--rank", "4",
                     "--output", str(tmp_path / "three.safetensors"), "--overwrite"]) == 0
        meta = safe_open(str(tmp_path / "three.safetensors"), framework="pt").metadata()
        assert meta["modelspec.trigger_phrase"] == said, weights
        assert ("zkw/" in meta["ss_tag_frequency"]) == (weights[1] == "1")
    small = tmp_path / "small.safetensors"
    assert main(["merge", str(trained), str(second), "--rank", "3", "--output", str(small)]) == 0
    for base, update in updates(small).items():  # the best rank-3 approximation of each layer's sum
        values = torch.linalg.svdvals(first[base] + other.get(base, 0))
        error = torch.linalg.norm(update - first[base] - other.get(base, 0))
        assert float(error) <= float(values[3:].square().sum().sqrt()) * 1.01 + 1e-3 * float(values[0]), base
    assert_read_alike_by_diffusers_and_lowvram(merged)  # (rank 12 where both adapt a layer, 8 elsewhere)
    assert_read_alike_by_diffusers_and_lowvram(small)


def test_lora_files_of_different_models_are_not_merged(trained, tmp_path, capsys):
    sdxl = train(run_config(model="tiny-sdxl", output=str(tmp_path / "xl"), max_steps=1, rank=4,
                            train_text_encoder=True)).lora_path
    with_encoder = train(run_config(output=str(tmp_path / "sd"), max_steps=1, rank=4,
                                    train_text_encoder=True)).lora_path
    assert main(["merge", str(trained), str(sdxl), "--rank", "4", "--output", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "merge LoRAs of one base model" in err and len(err.strip().splitlines()) == 1
    for name, path in (("sd", trained), ("xl", sdxl)):  # files that say nothing of their model: known by their layers
        save_file(load_file(str(path)), str(tmp_path / f"{name}.safetensors"))
    bare = [str(tmp_path / "sd.safetensors"), str(tmp_path / "xl.safetensors")]
    assert main(["merge", *bare, "--rank", "4", "--output", str(tmp_path / "m.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lowvram merge: error: {bare[0]} is for tiny SD (random weights), {bare[1]} for tiny SDXL (random weights) "
        "(by their layers); merge LoRAs of one base model")
    unet_only = {key: value for key, value in load_file(bare[0]).items() if key.startswith("lora_unet")}
    save_file(unet_only, str(tmp_path / "unet.safetensors"))  # no text-encoder layers: the U-Net's width tells
    assert main(["merge", str(tmp_path / "unet.safetensors"), bare[1], "--rank", "4", "--output",
                 str(tmp_path / "m.safetensors")]) == 2
    assert "(by their layers)" in capsys.readouterr().err
    save_file({key: value for key, value in load_file(bare[1]).items() if key.startswith("lora_te")},
              str(tmp_path / "xl-te.safetensors"))  # an SDXL file of text-encoder layers alone: two encoders tell
    save_file(load_file(str(with_encoder)), str(tmp_path / "sd-both.safetensors"))
    assert main(["merge", str(tmp_path / "sd-both.safetensors"), str(tmp_path / "xl-te.safetensors"), "--rank", "4",
                 "--output", str(tmp_path / "m.safetensors")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "sd-both.safetensors is for tiny SD (random weights), " + str(tmp_path / "xl-te.safetensors") + " for "
        "Stable Diffusion XL or tiny SDXL (random weights) (by their layers); merge LoRAs of one base model")
    assert not (tmp_path / "m.safetensors").exists()
    save_file({key: value for key, value in load_file(str(with_encoder)).items() if key.startswith("lora_te")},
              str(tmp_path / "sd-te.safetensors"))  # lora_te_ alone, no U-Net width: one encoder's, not SDXL's CLIP-L
    assert main(["merge", str(tmp_path / "sd-te.safetensors"), bare[1], "--rank", "4", "--output",
                 str(tmp_path / "m.safetensors")]) == 2
    assert "sd-te.safetensors is for Stable Diffusion 1.5 or tiny SD (random weights)" in capsys.readouterr().err
    # an SDXL file whose CLIP-L layers are named lora_te_ (as ComfyUI reads them) is SDXL's: merged, and its layers
    # added up with another file's lora_te1_ ones
    clip_l = {key.replace("lora_te1_", "lora_te_"): value for key, value in load_file(bare[1]).items()}
    save_file(clip_l, str(tmp_path / "xl-te-named.safetensors"))
    merged = tmp_path / "m.safetensors"
    assert main(["merge", str(tmp_path / "xl-te-named.safetensors"), bare[1], "--rank", "8", "--output",
                 str(merged), "--save-precision", "fp32"]) == 0
    assert {key.split(".")[0] for key in load_file(str(merged))} == {key.split(".")[0] for key in load_file(bare[1])}
    for base, update in updates(merged).items():  # each layer twice: its two files' updates summed
        torch.testing.assert_close(update, 2 * updates(bare[1])[base], rtol=1e-3, atol=1e-5)
    save_file(load_file(bare[1]) | clip_l, str(tmp_path / "both-names.safetensors"))  # one file, both namings
    assert main(["merge", str(tmp_path / "both-names.safetensors"), "--rank", "8", "--output",
                 str(tmp_path / "n.safetensors")]) == 2
    assert "both-names.safetensors holds one layer under two names (lora_te1_" in capsys.readouterr().err


def test_a_file_written_into_a_lora_list_folder_gets_its_automatic1111_card(trained, second, tmp_path):
    """AUTOMATIC1111 shows a LoRA's trigger words and filters by base model from its card (<name>.json), which a
    run writes into models/Lora; resize's, merge's and extract's output there had none. A card the user wrote is
    kept, its base model following the new file's."""
    loras = tmp_path / "webui" / "models" / "Lora"
    loras.mkdir(parents=True)
    assert main(["resize", str(trained), "--rank", "2", "--output", str(loras / "small.safetensors")]) == 0
    assert json.loads((loras / "small.json").read_text()) == {"sd version": "SD1", "activation text": "lvshape"}
    (loras / "both.json").write_text('{"sd version": "SDXL", "activation text": "mine", "notes": "v2"}')
    assert main(["merge", str(trained), str(second), "--rank", "2", "--output", str(loras / "both.safetensors")]) == 0
    assert json.loads((loras / "both.json").read_text()) == {"sd version": "SD1", "activation text": "mine",
                                                             "notes": "v2"}
    assert main(["resize", str(trained), "--rank", "2", "--output", str(tmp_path / "elsewhere.safetensors")]) == 0
    assert not (tmp_path / "elsewhere.json").exists()  # (beside a LoRA kept elsewhere, a JSON is clutter)
    # replaced: lowvram's card of the earlier file goes with it (its trigger words were that LoRA's), the user's stays
    with safe_open(str(trained), framework="pt") as source:
        renamed = source.metadata() | {"modelspec.trigger_phrase": "bob"}
    save_file(load_file(str(trained)), str(tmp_path / "bob.safetensors"), renamed)
    assert main(["resize", str(tmp_path / "bob.safetensors"), "--rank", "2", "--output", str(loras / "small.safetensors"),
                 "--overwrite"]) == 0
    assert json.loads((loras / "small.json").read_text()) == {"sd version": "SD1", "activation text": "bob"}
    assert main(["resize", str(tmp_path / "bob.safetensors"), "--rank", "2", "--output", str(loras / "both.safetensors"),
                 "--overwrite"]) == 0
    assert json.loads((loras / "both.json").read_text())["activation text"] == "mine"
