"""--network-weights: a run starts from an existing LoRA file (kohya's --network_weights), of every network
type and layer set, text encoders included; a file that does not match the run is refused in one line that
names the options to pass."""

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import run_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lowvram.adapters import lora_files, networks
from lowvram.cli import main
from lowvram.errors import LowvramError
from lowvram.models import load_model
from lowvram.train.loop import train

CASES = [("tiny", "lora", "attn"), ("tiny", "dora", "full", "conv"), ("tiny-sdxl", "loha", "attn-mlp"),
         ("tiny", "lokr", "attn"), ("tiny-sdxl", "lokr", "full")]
CONV = {"conv_rank": 2, "conv_alpha": 3.0}  # "conv": the 3x3 convolutions' own rank and alpha (kohya's conv_dim)


def settings(model: str, network: str, layers: str, conv: str = "", **overrides) -> dict:
    return {"model": model, "network": network, "lora_layers": layers, "rank": 4, "alpha": 2.0,
            "train_text_encoder": True, "save_precision": "fp32"} | (CONV if conv else {}) | overrides


@pytest.fixture(scope="module", params=CASES, ids="-".join)
def first(request, tmp_path_factory):
    """A trained LoRA file: what a user brings to train further."""
    out = tmp_path_factory.mktemp("-".join(request.param))
    values = settings(*request.param, output=str(out), max_steps=3, lr=1e-2, text_encoder_lr=5e-3)
    return values, train(run_config(**values))


def test_the_adapters_start_exactly_as_the_file_says(first):
    values, result = first
    model = load_model(values["model"])
    config = run_config(**values)
    networks.add_lora(model, config.network, config.alpha, True)
    assert lora_files.start_from(model, result.lora_path, config.network) == len(lora_files.kohya_layers(model))
    saved, filled = load_file(str(result.lora_path)), lora_files.kohya_state_dict(model, torch.float32)
    assert saved.keys() == filled.keys()
    for key, tensor in saved.items():
        torch.testing.assert_close(filled[key], tensor, rtol=1e-6, atol=0, msg=key)


def test_a_run_from_the_file_continues_it(first, tmp_path, capsys):
    """One more step at a small learning rate stays next to the file's LoRA; from scratch it would be far."""
    values, result = first
    more = train(run_config(**values | {"output": str(tmp_path), "max_steps": 1, "lr": 1e-5, "text_encoder_lr": 1e-5,
                                        "network_weights": str(result.lora_path)}))
    assert "adapters start from" in " ".join(capsys.readouterr().out.split())
    before, after = load_file(str(result.lora_path)), load_file(str(more.lora_path))
    for key in before:
        if key.endswith("alpha"):
            continue
        change = (after[key] - before[key]).norm() / before[key].norm().clamp_min(1e-12)
        assert change < 0.05, (key, change)


def test_a_file_of_another_type_rank_or_layer_set_is_refused_in_one_line(first, tmp_path):
    """The type, rank and alpha are refused by the config check (before any caching); the layers once the model's
    are known."""
    from lowvram.lora_header import network_options

    values, result = first
    path = str(result.lora_path)
    other = {"lora": "loha", "dora": "lora", "loha": "lokr", "lokr": "lora"}[values["network"]]
    convolutions = bool(network_options(result.lora_path).get("conv_rank"))  # (those are said before any caching)
    cases = [({"network": other}, [f"pass --network {values['network']}"], "config"),
             ({"lora_layers": "attn", "conv_rank": None, "conv_alpha": None} if values["lora_layers"] != "attn"
              else None, [f"pass the --lora-layers {values['lora_layers']}"], "config" if convolutions else "run"),
             ({"train_text_encoder": False, "text_encoder_lr": None}, ["--train-text-encoder"], "run")]
    if values["network"] != "lokr" or values["lora_layers"] != "attn":  # tiny LoKr with whole factors has no rank
        cases.append(({"rank": 8}, ["was trained with rank 4 and alpha 2", "pass --rank 4 --alpha 2"], "config"))
    if "conv_rank" in values:
        cases.append(({"conv_rank": None, "conv_alpha": None},
                      ["was trained with 3x3 convolutions of rank 2 and alpha 3", "pass --conv-rank 2 --conv-alpha 3"],
                      "config"))
    for change, expected, stage in cases:
        if change is None:
            continue
        try:
            config = run_config(**values | change | {"output": str(tmp_path / "x"), "network_weights": path,
                                                     "max_steps": 1})
        except LowvramError as error:
            message, refused_at = str(error), "config"
        else:
            with pytest.raises(LowvramError) as error:
                train(config)
            message, refused_at = str(error.value), "run"
        assert refused_at == stage, (change, message)
        assert all(part in message for part in expected) and "--network-weights" in message, message
        assert len(message.splitlines()) == 1, message
    assert not (tmp_path / "x" / "x.safetensors").exists()


def test_a_missing_or_pickled_file_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(LowvramError, match="--network-weights: file not found"):
        run_config(network_weights=str(tmp_path / "nope.safetensors"))
    (tmp_path / "old.ckpt").write_bytes(b"not opened")
    with pytest.raises(LowvramError, match="--network-weights: .*pickle") as error:
        run_config(network_weights=str(tmp_path / "old.ckpt"))
    assert len(str(error.value).splitlines()) == 1  # refused unread: no second line about its header


def test_a_file_that_is_not_safetensors_is_named_with_the_option(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    with pytest.raises(LowvramError) as error:
        train(run_config(output=str(tmp_path / "out"), max_steps=1, network_weights=str(broken)))
    message = str(error.value)
    assert message.startswith(f"--network-weights: {broken} is not a readable .safetensors file")
    assert len(message.splitlines()) == 1
    from lowvram.lora_header import with_network_weights

    odd = tmp_path / "odd.safetensors"  # a header of valid JSON that is no safetensors header
    header = b'{"lora_unet_x.lora_down.weight": {"dtype": "F16"}}'
    odd.write_bytes(len(header).to_bytes(8, "little") + header)
    for path in (broken, odd):  # nothing taken from them; the error comes where the file is read
        assert with_network_weights({"network_weights": str(path)}) == {"network_weights": str(path)}
    assert not (tmp_path / "out" / "out.safetensors").exists()


def test_the_files_network_is_the_runs_where_the_run_sets_none(first, tmp_path, capsys):
    """kohya's --dim_from_weights, for every network setting: the file's type, rank, alpha, convolutions' rank and
    alpha, layers and text encoders, read from its header, unless the run gives them."""
    from lowvram.cli import main
    from lowvram.lora_header import network_options

    values, result = first
    implied = network_options(result.lora_path)
    wanted = {key: values[key] for key in ("network", "lora_layers", "train_text_encoder")}
    if values["network"] != "lokr" or values["lora_layers"] != "attn":  # tiny LoKr with whole factors: no rank
        wanted |= {"rank": 4, "alpha": 2.0}
    wanted |= CONV if "conv_rank" in values else {}
    assert {key: implied[key] for key in wanted} == wanted
    argv = ["train", "--model", values["model"], "--data", "sample", "--output", str(tmp_path), "--max-steps", "1",
            "--network-weights", str(result.lora_path)]
    assert main(argv) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"--network-weights: {result.lora_path} holds --network {values['network']}" in err
    if "rank" in wanted:  # given, it is the run's: the file does not fit it
        assert main([*argv, "--rank", "8", "--overwrite"]) == 2


def test_an_alpha_stored_in_fp16_or_bf16_is_the_one_given():
    """A file's alpha is stored in its --save-precision: bf16 keeps 7.3 as 7.3125, which is still --alpha 7.3."""
    import torch

    from lowvram.lora_header import same_alpha

    for dtype in (torch.float16, torch.bfloat16):
        assert same_alpha(float(torch.tensor(7.3, dtype=dtype)), 7.3)
    assert not same_alpha(7.0, 7.3) and not same_alpha(8.0, 4.0)


def test_a_file_of_alpha_zero_is_named_not_the_alpha_never_given(tmp_path):
    """Its alpha 0 was taken as the run's: '--alpha: must be > 0, got 0.0', an option the user never gave."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "dead.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(32, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(0.0)}, str(path))
    with pytest.raises(LowvramError) as error:
        run_config(network_weights=str(path))
    assert str(error.value) == (f"--network-weights: {path}'s layers have alpha 0, which scales them to nothing: it "
                                "applies as no LoRA there and cannot be trained further; start without it, or from a LoRA "
                                "with a positive alpha")


def test_another_trainers_file_says_its_network_by_its_layers_and_its_bf16_alphas(tmp_path):
    """A kohya LoRA of an SD1.5 model, without lowvram's metadata: its transformers' 1x1 proj_in is no 3x3
    convolution, its feed-forward layers make it attn-mlp, and its alphas, saved in bf16, are read as stored."""
    from safetensors.torch import save_file

    from lowvram.lora_header import network_options

    tensors = {}
    for layer, down, up in (("lora_unet_down_blocks_0_attentions_0_proj_in", (4, 320, 1, 1), (320, 4, 1, 1)),
                            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj", (4, 320),
                             (2560, 4)),
                            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", (4, 320),
                             (320, 4))):
        tensors |= {f"{layer}.lora_down.weight": torch.zeros(down, dtype=torch.bfloat16),
                    f"{layer}.lora_up.weight": torch.zeros(up, dtype=torch.bfloat16),
                    f"{layer}.alpha": torch.tensor(7.3, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "kohya.safetensors"), {"ss_network_module": "networks.lora"})
    assert network_options(tmp_path / "kohya.safetensors") == {
        "network": "lora", "rank": 4, "alpha": 7.3125, "lora_layers": "attn-mlp", "train_text_encoder": False}


def test_resume_auto_in_a_new_folder_checks_the_network_weights_file_as_a_new_run_does(tmp_path):
    """--resume auto where nothing is there to continue starts a new run from the file: a rank it does not hold is
    refused by the config check, not after the scan, the model and the caches."""
    lora = train(run_config(output=str(tmp_path / "first"), max_steps=1)).lora_path
    with pytest.raises(LowvramError, match="was trained with rank 4 and alpha"):
        run_config(network_weights=str(lora), rank=8, resume="auto", output=str(tmp_path / "new"))


def test_files_of_one_rank_per_kind_or_per_block_continue_and_the_refusal_names_their_flags(tmp_path):
    """The refusal of several ranks (a --dynamic resize's or a merge's) leaves alone what continues: a LoHa whose
    convolutions have their own rank, and a file of ranks per block, whose own flags it names."""
    loha = train(run_config(output=str(tmp_path / "loha"), max_steps=1, network="loha", rank=4, alpha=4,
                            lora_layers="full", conv_rank=2, conv_alpha=2)).lora_path
    run_config(network_weights=str(loha), network="loha", rank=4, alpha=4, lora_layers="full", conv_rank=2,
               conv_alpha=2)  # no problem: it continues
    from lowvram.lora_header import network_options

    # a LoHa's flat 3x3 factors tell no convolution: the file's conv_dim does (it was refused only after caching,
    # "was trained with 3x3 convolutions of rank 2 and alpha 2", the file's own options read as rank 4)
    assert {key: network_options(loha)[key] for key in ("conv_rank", "conv_alpha")} == {"conv_rank": 2, "conv_alpha": 2}
    # another tool's (no lowvram.lora_layers): kohya_ss writes conv_dim whatever the preset, which alone says whether
    # the convolutions train; LyCORIS's conv_alpha defaults to the network's alpha
    tensors = load_file(str(loha))
    with safe_open(str(loha), "pt") as held:
        metadata = dict(held.metadata())
    del metadata["lowvram.lora_layers"]
    for preset, expected in (("full", {"conv_rank": 2, "conv_alpha": 4.0, "lora_layers": "full"}),
                             ("attn-mlp", {"conv_rank": None, "conv_alpha": None})):
        other = tmp_path / f"other-{preset}.safetensors"
        save_file(tensors, str(other), metadata | {"ss_network_args": json.dumps(
            {"algo": "loha", "preset": preset, "conv_dim": "2"})})
        read = network_options(other)
        assert {key: read.get(key) for key in expected} == expected, preset
    ranks = ",".join(["8"] * 12 + ["4"] + ["2"] * 12)
    blocks = train(run_config(output=str(tmp_path / "blocks"), max_steps=1, block_ranks=ranks)).lora_path
    with pytest.raises(LowvramError) as error:
        run_config(network_weights=str(blocks))
    assert str(error.value).startswith(f"--network-weights: {blocks} was trained with ranks per block; pass "
                                       f"--block-ranks {ranks}")
    run_config(network_weights=str(blocks), block_ranks=ranks)  # as it says
    # a LoHa's (its convolutions not told apart by shape) too: it said "pass --rank 4 --alpha 16" only once its
    # layers were read, and then "pass --rank 8 --alpha 16" after that, never its --block-ranks
    loha_blocks = train(run_config(output=str(tmp_path / "loha-blocks"), max_steps=1, network="loha",
                                   block_ranks=ranks)).lora_path
    with pytest.raises(LowvramError) as error:
        run_config(network_weights=str(loha_blocks), network="loha")
    assert str(error.value).startswith(f"--network-weights: {loha_blocks} was trained with ranks per block; pass "
                                       f"--block-ranks {ranks}")
    run_config(network_weights=str(loha_blocks), network="loha", block_ranks=ranks)


def test_a_file_refused_for_several_ranks_is_not_first_said_to_be_trained_further(tmp_path, capsys):
    """The note 'holds --rank 8 ...; trained further with those' came before the refusal of the same file."""
    from lowvram.cli import main

    ranks = ",".join(["8"] * 12 + ["4"] + ["2"] * 12)
    blocks = train(run_config(output=str(tmp_path / "blocks"), max_steps=1, block_ranks=ranks)).lora_path
    capsys.readouterr()
    argv = ["train", "--model", "tiny", "--data", "sample", "--network-weights", str(blocks), "--vram", "4GB"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was trained with ranks per block" in err and "trained further with those" not in err
    assert main([*argv, "--block-ranks", ranks]) == 2  # (stopped by --vram without --auto, after the notes)
    assert "trained further with those" in capsys.readouterr().err  # its other settings, taken


def test_layers_the_file_lacks_are_said_to_start_fresh(first, tmp_path, capsys):
    """A file whose run left some blocks out (a rate of 0 there): its layers are filled, the others start fresh, and
    the line said only how many were filled."""
    values, result = first
    tensors = load_file(str(result.lora_path))
    dropped = next(key for key in tensors if key.startswith("lora_unet_")).split(".")[0]
    partial = tmp_path / "partial.safetensors"
    save_file({key: t for key, t in tensors.items() if not key.startswith(dropped + ".")}, str(partial),
              safe_open(str(result.lora_path), framework="pt").metadata())
    train(run_config(**values | {"output": str(tmp_path / "out"), "max_steps": 1, "network_weights": str(partial)}))
    assert "layers; 1 this run adapts are not in it and start fresh)" in " ".join(capsys.readouterr().out.split())


def test_layers_of_one_rank_but_several_alphas_are_refused_once_and_a_tucker_locons_convolutions_counted(tmp_path):
    """Every third layer at alpha 1, the rest at 4: each answer sent the user to the other alpha ('pass --alpha 1',
    then 'pass --alpha 4'). A LoCon whose 3x3 convolutions are Tucker cores (lora_mid) was read as attn-mlp."""
    from lowvram.lora_header import network_options

    lora = train(run_config(output=str(tmp_path / "run"), max_steps=1, rank=4, alpha=4)).lora_path
    tensors = load_file(str(lora))
    alphas = sorted(key for key in tensors if key.endswith(".alpha"))
    mixed = {**tensors, **{key: torch.tensor(1.0) for key in alphas[::3]}}
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    for alpha in (None, 1, 4):
        with pytest.raises(LowvramError, match=r"holds layers of one rank but several alphas \(1, 4\)"):
            run_config(network_weights=str(tmp_path / "mixed.safetensors"), **({"alpha": alpha} if alpha else {}))
    import contextlib
    import io
    import json

    from lowvram.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as out:  # info --json says it as its text does
        assert main(["info", str(tmp_path / "mixed.safetensors"), "--json"]) == 0
    assert "several alphas (1, 4)" in json.loads(out.getvalue())["network_weights_refused"]
    with contextlib.redirect_stderr(io.StringIO()) as err:  # refused, not first said to be trained further
        assert main(["train", "--model", "tiny", "--data", "sample", "--network-weights",
                     str(tmp_path / "mixed.safetensors")]) == 2
    assert "several alphas (1, 4)" in err.getvalue() and "trained further with those" not in err.getvalue()
    locon = train(run_config(output=str(tmp_path / "locon"), max_steps=1, rank=4, alpha=4, lora_layers="full",
                             conv_rank=2, conv_alpha=2)).lora_path
    tucker = {}
    for key, tensor in load_file(str(locon)).items():
        if key.endswith(".lora_down.weight") and tensor.dim() == 4 and tensor.shape[-1] == 3:
            tucker[key] = torch.zeros(tensor.shape[0], tensor.shape[1], 1, 1)
            tucker[key.replace("lora_down", "lora_mid")] = torch.zeros(tensor.shape[0], tensor.shape[0], 3, 3)
        else:
            tucker[key] = tensor
    save_file(tucker, str(tmp_path / "tucker.safetensors"))
    held = network_options(tmp_path / "tucker.safetensors")
    assert (held["lora_layers"], held["conv_rank"], held["conv_alpha"]) == ("full", 2, 2)


def test_peft_names_of_every_form_read_at_the_scale_peft_applies(tmp_path):
    """A peft adapter's own names (base_model.model., the adapter's name in them) and a rank-stabilized LoRA's
    alphas (alpha / sqrt(rank): read as alpha / rank, it was 2x too weak at rank 4); a folder peft's save_pretrained
    wrote, whose alpha is in its adapter_config.json (read at alpha = rank, it applied 4x over)."""
    import json

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from test_train import model_outputs

    from lowvram.lora_header import network_options

    for name, config in (("rslora", LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["to_q", "to_k"],
                                               init_lora_weights=False)),
                         ("named", LoraConfig(r=4, lora_alpha=4, target_modules=["to_v"], init_lora_weights=False)),
                         ("saved/adapter_model", LoraConfig(r=4, lora_alpha=1, target_modules=["to_q"],
                                                            init_lora_weights=False))):
        torch.manual_seed(0)
        adapted = load_model("tiny")
        adapted.unet.add_adapter(config)
        state = get_peft_model_state_dict(adapted.unet)
        if name == "rslora":  # diffusers' layout, its adapter metadata
            tensors = {f"unet.{key}": tensor.contiguous() for key, tensor in state.items()}
            metadata = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8,
                                                             "unet.use_rslora": True})}
        elif name == "named":  # a peft model's own state dict, saved as it is: no part, the adapter's name, no metadata
            tensors = {"base_model.model." + key.replace(".weight", ".default.weight"): tensor.contiguous()
                       for key, tensor in state.items()}
            metadata = {}
        else:  # as peft's save_pretrained writes a model's adapter: its settings in adapter_config.json beside it
            tensors, metadata = {"base_model.model." + key: tensor.contiguous() for key, tensor in state.items()}, {}
            config.save_pretrained(str(tmp_path / "saved"))
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata)
        ours = load_model("tiny")
        lora_files.load_kohya(ours, tmp_path / f"{name}.safetensors")
        torch.testing.assert_close(model_outputs(ours)[1], model_outputs(adapted)[1], rtol=1e-4, atol=1e-5)
    assert network_options(tmp_path / "saved" / "adapter_model.safetensors")["alpha"] == 1  # info and train's too


def test_files_that_are_no_kohya_lora_are_named_for_what_they_are_by_every_command(tmp_path, capsys):
    """An embedding was 'unknown' or 'a model checkpoint is --model', a LyCORIS full (diff) file 'no LoRA layers'
    without its name; a FLUX LoRA in diffusers' layout is of another kind of model (SD1.5's and SDXL's are read)."""
    from lowvram.cli import main

    save_file({"emb_params": torch.zeros(2, 32)}, str(tmp_path / "embedding.safetensors"))
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.diff": torch.zeros(4, 4)},
              str(tmp_path / "full.safetensors"))
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 4),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(4, 2)},
              str(tmp_path / "flux.safetensors"))
    pair = {"lora_A.weight": torch.zeros(2, 4), "lora_B.weight": torch.zeros(4, 2)}
    for name, layer in (("comfy_flux", "diffusion_model.double_blocks.0.img_attn.qkv"), ("wan", "blocks.0.self_attn.q"),
                        ("sd3", "transformer.transformer_blocks.0.attn.to_q"),  # (with CLIP's layers too)
                        ("adapters", "unet/down_blocks.0.attentions.0.proj_in")):  # a lowvram checkpoint's
        extra = {f"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.{k}": t.clone() for k, t in pair.items()}
        save_file({f"{layer}.{k}": t for k, t in pair.items()} | (extra if name == "sd3" else {}),
                  str(tmp_path / f"{name}.safetensors"))
    says = {"embedding": "it is a textual-inversion embedding, not a LoRA", "full": "it is a LyCORIS full (diff) file",
            "flux": "it is a LoRA of another kind of model (its layers are a `transformer`'s",
            "comfy_flux": "it is a LoRA of another kind of model (its layers are a `diffusion_model`'s",
            "wan": "it is a LoRA of another kind of model (its layers are a `blocks`'s",
            "sd3": "it is a LoRA of another kind of model (its layers are a `transformer`'s",
            "adapters": "it is a lowvram checkpoint's adapters, not a LoRA"}
    for name, said in says.items():
        path = tmp_path / f"{name}.safetensors"
        for argv in (["resize", str(path), "--rank", "2", "--output", str(tmp_path / "r.safetensors")],
                     ["merge", str(path), "--model", "tiny", "--output", str(tmp_path / "m.safetensors")],
                     ["train", "--model", "tiny", "--data", "sample", "--network-weights", str(path)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert said in err and str(path) in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert main(["info", str(tmp_path / "embedding.safetensors")]) == 1
    assert says["embedding"] in " ".join(capsys.readouterr().out.split())
    # diffusers' older layouts (attention processors' to_q_lora, text encoders' lora_linear_layer): LoRAs, not
    # 'unknown' of twice their modules
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight":
               torch.zeros(2, 4), "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"
               ".up.weight": torch.zeros(4, 2), "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
               ".lora_linear_layer.down.weight": torch.zeros(2, 4), "text_encoder.text_model.encoder.layers.0"
               ".self_attn.q_proj.lora_linear_layer.up.weight": torch.zeros(4, 2)}, str(tmp_path / "old.safetensors"))
    assert main(["info", str(tmp_path / "old.safetensors")]) == 0
    assert "old.safetensors: LoRA (diffusers/peft layout), 2 modules, rank 2," in capsys.readouterr().out


def test_a_pickled_lora_gets_the_one_command_that_converts_it_from_every_command(tmp_path, capsys):
    """train named the conversion; generate said only 'not a .safetensors file', info 'its header size is nonsense'."""
    from lowvram.cli import main

    path = tmp_path / "style.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, path)
    for argv in (["generate", "--model", "tiny", "--prompt", "x", "--lora", str(path)], ["info", str(path)],
                 ["train", "--model", "tiny", "--data", "sample", "--network-weights", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{path} is a pickle file, which can run arbitrary code when loaded" in err, argv
        assert "convert it once to safetensors" in err and len(err.strip().splitlines()) == 1, argv


def test_a_diffusers_lora_folder_where_a_file_goes_names_its_weights_file(tmp_path, capsys):
    """`train --network-weights run/x-diffusers` said 'file not found' of a folder that is there; merge and resize
    said only 'a folder'."""
    from lowvram.cli import main

    folder = tmp_path / "x-diffusers"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"")
    its = f"{folder} is a folder; give its {folder / 'pytorch_lora_weights.safetensors'}"
    for argv, said in ((["train", "--model", "tiny", "--data", "sample", "--network-weights", str(folder)],
                        f"--network-weights: {its}"),
                       (["train", "--model", "tiny", "--data", "sample", "--base-weights", str(folder)],
                        f"--base-weights: {its}"),
                       (["resize", str(folder), "--rank", "2"], its.replace(" is a folder", ": a folder")),
                       (["merge", str(folder), "--rank", "2"], its.replace(" is a folder", ": a folder"))):
        assert main(argv) == 2, argv
        assert said in capsys.readouterr().err, argv


def test_a_bare_lora_of_another_family_is_refused_by_its_layers_before_caching(tmp_path):
    """An SDXL LoRA without metadata (as many shared ones are) given as --network-weights on SD1.5 was refused only
    after the data was cached, by the layers it could not place."""
    from safetensors.torch import load_file, save_file

    lora = train(run_config(model="tiny-sdxl", output=str(tmp_path / "xl"), max_steps=1,
                            train_text_encoder=True)).lora_path
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(lora)), str(bare))
    with pytest.raises(LowvramError, match=re.escape(f"--network-weights: {bare} is a LoRA for Stable Diffusion XL "
                                                     "(its layers say), not for tiny SD (random weights)")):
        train(run_config(model="tiny", output=str(tmp_path / "sd"), max_steps=1, network_weights=str(bare),
                         train_text_encoder=True, cache_dir=str(tmp_path / "cache")))
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing encoded


def test_lokr_files_and_checkpoints_of_the_earlier_split_still_apply_train_on_and_resume(tmp_path, monkeypatch):
    """Before 2026-12-05 lowvram split a side by a LoKr factor above its root as peft does (32 at factor 8: 8 x 4,
    LyCORIS's 4 x 8); since, as LyCORIS. Its own earlier files and checkpoints must still apply, train on and
    resume (they were "another model family?", and a resume a size-mismatch traceback)."""
    from safetensors.torch import load_file

    from lowvram.adapters import lora_files
    from lowvram.lora_header import larger_side_first
    from lowvram.models.loading import load_model
    from lowvram.train import setup

    values = {"model": "tiny", "network": "lokr", "lokr_factor": 8, "rank": 1, "alpha": 1.0, "lr": 1e-3}
    with monkeypatch.context() as earlier:  # the earlier lowvram, whose adapters took peft's split
        earlier.setattr(setup, "_earlier_lokr_shapes", lambda session: True)
        old = train(run_config(output=str(tmp_path / "old"), max_steps=2, checkpoint_every=2, **values)).lora_path
    shapes = {key: tuple(tensor.shape) for key, tensor in load_file(str(old)).items()}
    assert larger_side_first(shapes) and not larger_side_first(
        {key: tuple(t.shape) for key, t in load_file(str(train(run_config(
            output=str(tmp_path / "new"), max_steps=1, **values)).lora_path)).items()})
    lora_files.load_kohya(load_model("tiny"), old)  # generate's and merge's reader
    train(run_config(output=str(tmp_path / "further"), max_steps=1, network_weights=str(old), **values))
    resumed = train(run_config(output=str(tmp_path / "old"), max_steps=3, resume="auto", **values)).lora_path
    assert {key: tuple(t.shape) for key, t in load_file(str(resumed)).items()} == shapes


def test_a_locon_file_continued_with_fewer_layers_names_the_layers_it_was_trained_with(tmp_path):
    """A LoCon's --network-weights with --lora-layers attn: "--conv-rank: only --lora-layers full adapts the
    convolutions", a flag never given (the file's), and then the layers' refusal after the caching."""
    locon = train(run_config(output=str(tmp_path / "locon"), max_steps=1, lora_layers="full", conv_rank=2)).lora_path
    with pytest.raises(LowvramError) as refused:
        run_config(network_weights=str(locon), lora_layers="attn")
    assert str(refused.value) == (
        f"--network-weights: {locon} adapts the 3x3 convolutions too (kohya's LoCon), which --lora-layers attn "
        "leaves out; pass the --lora-layers full it was trained with, or leave --lora-layers out")


def test_a_lycoris_full_preset_file_is_said_not_to_be_continued_and_why(tmp_path):
    """LyCORIS's full preset adapts conv_in, conv_out and the time embedding, which no --lora-layers of lowvram's
    does: "pass the --lora-layers full it was trained with" was given to a run of --lora-layers full."""
    from lowvram.lora_header import read_header

    locon = train(run_config(output=str(tmp_path / "locon"), max_steps=1, lora_layers="full", conv_rank=2,
                             conv_alpha=2)).lora_path
    tensors = load_file(str(locon))
    unet = load_model("tiny").pipeline.unet
    for name, conv in (("conv_in", unet.conv_in), ("conv_out", unet.conv_out)):
        tensors[f"lora_unet_{name}.lora_down.weight"] = torch.zeros(2, conv.in_channels, 3, 3, dtype=torch.float16)
        tensors[f"lora_unet_{name}.lora_up.weight"] = torch.zeros(conv.out_channels, 2, 1, 1, dtype=torch.float16)
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(2.0, dtype=torch.float16)
    full = tmp_path / "full.safetensors"
    save_file(tensors, str(full), read_header(locon)[0])
    with pytest.raises(LowvramError) as refused:
        train(run_config(output=str(tmp_path / "more"), max_steps=1, lora_layers="full", conv_rank=2, conv_alpha=2,
                         network_weights=str(full)))
    assert str(refused.value) == (
        f"--network-weights: {full} adapts the U-Net's conv_in, conv_out (LyCORIS's full preset), which lowvram does "
        "not train: it cannot continue this file; generate, resize and merge take it, or train a new LoRA")
    # an SDXL file names them in the original layout, as kohya's SDXL files do (a review found them passed by)
    from lowvram.adapters.lora_files import NEVER_TRAINED

    assert all(NEVER_TRAINED.fullmatch(f"lora_unet_{name}") for name in (
        "input_blocks_0_0", "out_2", "time_embed_0", "label_emb_0_2", "add_embedding_linear_1"))
    assert not any(NEVER_TRAINED.fullmatch(f"lora_unet_{name}") for name in (
        "input_blocks_1_0_in_layers_2", "output_blocks_2_1_conv", "out_2_proj"))


def test_a_lokr_file_continued_with_another_factor_names_its_own(tmp_path):
    """--lokr-factor 8 over a file of factor 4: torch's "size mismatch for ...lokr_w1.default: copying a param with
    shape torch.Size([4, 4])", after the caching."""
    lokr = train(run_config(output=str(tmp_path / "lokr"), max_steps=1, network="lokr", lokr_factor=4)).lora_path
    with pytest.raises(LowvramError) as refused:
        run_config(network_weights=str(lokr), network="lokr", lokr_factor=8)
    assert str(refused.value) == (f"--network-weights: {lokr} was trained with --lokr-factor 4 (this run's: 8); pass "
                                  "--lokr-factor 4, or leave it out to take the file's")
    with pytest.raises(LowvramError, match=r"trained with --lokr-factor 4 \(this run's: -1\)"):  # (-1 given: the same
        run_config(network_weights=str(lokr), network="lokr", lokr_factor=-1)  # mismatch)
    assert main(["train", "--model", "tiny", "--data", "sample", "--network-weights", str(lokr), "--network", "lokr",
                 "--output", str(tmp_path / "on"), "--max-steps", "1"]) == 0  # (left out: the file's, taken)


def test_a_bare_lora_of_another_rank_or_with_text_layers_is_refused_before_caching(tmp_path):
    """Without metadata the config check cannot see a file's text-encoder layers: the run said them only once
    every image was encoded, from the layers it could not fill. (The rank and type are said by the config check.)"""
    from safetensors.torch import load_file, save_file

    lora = train(run_config(model="tiny", output=str(tmp_path / "first"), max_steps=1, rank=4, alpha=2,
                            train_text_encoder=True)).lora_path
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(lora)), str(bare))
    cases = [({"rank": 8, "train_text_encoder": True}, "was trained with rank 4 and alpha 2"),
             ({"rank": 4, "alpha": 2}, "has layers this run does not adapt (lora_te_"),
             ({"network": "loha", "rank": 4, "alpha": 2, "train_text_encoder": True}, "pass --network lora")]
    for change, expected in cases:
        cache = tmp_path / f"cache{len(expected)}"
        with pytest.raises(LowvramError) as refused:
            train(run_config(model="tiny", output=str(tmp_path / "next"), max_steps=1, network_weights=str(bare),
                             cache_dir=str(cache), **change))
        assert expected in str(refused.value) and len(str(refused.value).splitlines()) == 1, (change, refused.value)
        assert not list(cache.rglob("*.safetensors")), change  # nothing encoded
    train(run_config(model="tiny", output=str(tmp_path / "next"), max_steps=1, network_weights=str(bare), rank=4,
                     alpha=2, train_text_encoder=True))  # as it was trained: it continues


def test_a_lokr_of_whole_factors_continues_at_the_rank_it_was_trained_with(tmp_path):
    """A LoKr whose linear layers are mostly two whole Kronecker factors (no rank in their tensors) was read at its
    convolutions' rank, and a LoKr of whole factors alone (kohya_ss's "full rank" 100000) at none: each refusal
    asked for the other value, and the file could not be continued. Without metadata its flat 3x3 factors' layers
    were not seen as convolutions."""
    from lowvram.lora_header import network_options

    mixed = train(run_config(output=str(tmp_path / "mixed"), max_steps=1, network="lokr", lora_layers="full", rank=8,
                             alpha=8, conv_rank=4, conv_alpha=1)).lora_path
    whole = train(run_config(output=str(tmp_path / "whole"), max_steps=1, network="lokr", lora_layers="full",
                             rank=100000, alpha=1, conv_rank=100000, conv_alpha=1, lokr_factor=8)).lora_path
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(whole)), str(bare))
    assert {key: network_options(mixed)[key] for key in ("rank", "alpha", "conv_rank", "conv_alpha")} == {
        "rank": 8, "alpha": 8.0, "conv_rank": 4, "conv_alpha": 1.0}
    assert (network_options(whole)["rank"], network_options(bare)["lora_layers"]) == (100000, "full")
    # info on it, in a process of its own: peft, read for its factor, imported bitsandbytes, whose failed fetch of a
    # CPU kernel (on an AVX512-BF16 CPU) was logged as info's first line
    shown = subprocess.run([sys.executable, "-m", "lowvram", "info", str(bare)], check=False, capture_output=True,
                           text=True)
    assert (shown.returncode, shown.stderr) == (0, "") and "LoKr" in shown.stdout
    for index, lora in enumerate((mixed, whole, bare)):  # (the file's options taken, as the command line takes them)
        assert main(["train", "--model", "tiny", "--data", "sample", "--network-weights", str(lora), "--output",
                     str(tmp_path / f"on{index}"), "--max-steps", "1"]) == 0
