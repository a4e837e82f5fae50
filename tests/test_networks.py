"""Network types (LoRA, DoRA, LoHa, LoKr) on the tiny models: each trains, is saved under the kohya/LyCORIS keys
ComfyUI and AUTOMATIC1111 read, and the saved file rebuilds exactly the trained model when applied with the
loaders' own formulas (written out here independently of peft); diffusers reloads LoRA and DoRA; the frozen-weight
formats peft cannot adapt are refused with one clear line before the model is touched."""

import copy
import json
import re
import types

import pytest
import torch
from conftest import run_config
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from test_train import model_outputs

from lowvram.adapters import lora_files, networks
from lowvram.adapters.blocks import BLOCK_OPTIONS
from lowvram.config import NetworkConfig
from lowvram.errors import LowvramError
from lowvram.formats import WEIGHT_FORMATS
from lowvram.hardware import detect
from lowvram.models import load_model
from lowvram.quant import convert_frozen
from lowvram.resolve import resolve_run
from lowvram.train import checkpoint, checkpoint_folders
from lowvram.train.loop import train
from lowvram.train.setup import optimizer_groups

SUFFIXES = {
    "lora": {"lora_down.weight", "lora_up.weight", "alpha"},
    "dora": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},  # w2 whole or decomposed, by layer size
}
# (network, --unet-weights) pairs peft cannot train (on this machine, the CPU): refused with a clear error
REFUSED = {("loha", "bnb-nf4"), ("lokr", "bnb-nf4"), ("dora", "fp8"), ("dora", "bnb-int8"), ("dora", "w8a8-int8"),
           ("dora", "w8a8-fp8")}


CONV = {"conv_rank": 2, "conv_alpha": 3.0}  # "conv": the 3x3 convolutions' own rank and alpha (kohya's conv_dim)
# "blocks": tiny-sdxl's 23 blocks (kohya's SDXL numbering) at their own ranks, some at 0, and a block left untrained
BLOCKS = {"block_ranks": "4,4,2,4,2,4,0,4,2,4,4,2,4,4,2,6,4,2,4,0,4,4,4",
          "conv_block_ranks": "2,2,2,0,2,2,2,2,2,2,2,2,2,2,2,2,2,2,4,2,2,2,2", "conv_block_alphas": "3",
          "up_lr_weight": "1,0.5,1,1,0"}


@pytest.fixture(scope="module", params=[("tiny", "lora"), ("tiny", "dora"), ("tiny", "loha"), ("tiny", "lokr"),
                                        ("tiny-sdxl", "lokr"), ("tiny", "lora", "full"),
                                        ("tiny-sdxl", "dora", "full", "conv"), ("tiny", "loha", "full", "conv"),
                                        ("tiny-sdxl", "lokr", "attn-mlp"), ("tiny-sdxl", "lora", "full", "blocks")],
                ids="-".join)
def trained(request, tmp_path_factory):
    """A short run with alpha != rank and the text encoder(s) trained, saved in fp32 (lora and dora also in
    diffusers' layout). On tiny every LoKr layer keeps both Kronecker factors whole; on tiny-sdxl the 80-wide
    cross-attention inputs decompose the second one. With --lora-layers full the ResNet convolutions (3x3, and
    1x1 shortcuts) carry adapters too; "conv" gives the 3x3 ones their own rank and alpha, "blocks" each block."""
    model, network, *rest = request.param
    layers, conv = rest[0] if rest else "attn", "conv" in rest
    extra = (CONV if conv else {}) | (BLOCKS if "blocks" in rest else {})
    out = tmp_path_factory.mktemp(f"{model}-{network}-{layers}")
    config = run_config(model=model, network=network, output=str(out), max_steps=3, rank=4, alpha=2.0, lr=1e-2,
                        train_text_encoder=True, text_encoder_lr=5e-3, save_precision="fp32", lora_layers=layers,
                        format="diffusers" if network in ("lora", "dora") else "kohya", **extra)
    return config, train(config)


def adapted_layers(model):
    """(kohya prefix, module path as kohya writes it, peft layer) of every adapted layer."""
    parts = [("lora_unet", model.unet)] + [(spec.kohya_prefix, encoder) for spec, encoder in
                                          zip(model.family.text_encoders, model.text_encoders)]
    for prefix, module in parts:
        renamed = lora_files.kohya_unet_paths(module, model.family) if prefix == "lora_unet" else {}
        for name, layer in module.named_modules():
            if isinstance(layer, BaseTunerLayer):
                path = name if prefix == "lora_unet" or name.startswith("text_model.") else f"text_model.{name}"
                yield f"{prefix}_{renamed.get(path, path).replace('.', '_')}", layer


def effective_weight(layer):
    """The weight a Linear layer (adapted or not) really applies, probed through its forward; for a
    convolution, peft's base weight plus its delta (DoRA: rescaled per output channel)."""
    base = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
    if isinstance(base, torch.nn.Conv2d):
        if layer is base:
            return base.weight.detach()
        with torch.no_grad():
            merged = base.weight + layer.get_delta_weight("default")
            if getattr(layer, "use_dora", {}).get("default"):
                magnitude = layer.lora_magnitude_vector["default"].weight.reshape(-1, 1, 1, 1)
                merged = magnitude * merged / merged.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
            return merged
    with torch.no_grad():
        eye = torch.eye(layer.in_features)
        bias = layer.get_base_layer().bias if isinstance(layer, BaseTunerLayer) else layer.bias
        return (layer(eye) - (0 if bias is None else bias)).T


def lycoris_weight(state, key, weight):
    """The weight ComfyUI (comfy/weight_adapter) and LyCORIS compute for one saved layer on top of `weight`."""
    def get(name):
        return state.get(f"{key}.{name}")

    alpha = get("alpha").item()
    if get("lora_down.weight") is not None:
        down, up = get("lora_down.weight"), get("lora_up.weight")
        delta = (up.flatten(1) @ down.flatten(1)) * alpha / down.shape[0]
    elif get("hada_w1_a") is not None:
        delta = (get("hada_w1_a") @ get("hada_w1_b")) * (get("hada_w2_a") @ get("hada_w2_b"))
        delta = delta * alpha / get("hada_w1_b").shape[0]
    else:  # LoKr: alpha/rank only when a Kronecker factor is decomposed (rank = its inner size), else 1
        w1 = get("lokr_w1") if get("lokr_w1") is not None else get("lokr_w1_a") @ get("lokr_w1_b")
        w2 = get("lokr_w2") if get("lokr_w2") is not None else get("lokr_w2_a") @ get("lokr_w2_b")
        rank = next((get(n).shape[0] for n in ("lokr_w1_b", "lokr_w2_b") if get(n) is not None), None)
        delta = torch.kron(w1, w2) * (alpha / rank if rank else 1.0)
    merged = weight + delta.reshape(weight.shape)
    scale = get("dora_scale")
    if scale is not None:  # DoRA on the output axis (LyCORIS wd_on_output): each row's norm becomes dora_scale
        assert scale.shape == (weight.shape[0], *[1] * (weight.dim() - 1))
        norm = merged.flatten(1).norm(dim=1).reshape(scale.shape)
        merged = scale * merged / norm
    return merged


def test_each_network_trains_and_saves_only_its_keys(trained):
    config, result = trained
    network = config.network.network
    assert result.final_loss == result.final_loss  # finite
    layers = dict(adapted_layers(result.model))
    changed = {key for key, layer in layers.items()  # every adapter starts as the identity
               if (effective_weight(layer) - effective_weight(layer.get_base_layer())).abs().max() > 1e-5}
    groups = result.model.unet.config.norm_num_groups
    # a time projection into a block with one channel per norm group gets no gradient: the GroupNorm after it
    # removes any per-channel shift (the tiny models' first level; real ones have 10 channels a group)
    inert = {key for key, layer in layers.items() if key.endswith("time_emb_proj")
             and layer.get_base_layer().out_features == groups}
    assert {key for key in layers if key.startswith("lora_unet_")} - inert <= changed
    # in each text encoder; SDXL's first reads the penultimate layer, so its last layer gets no gradient
    assert {key.split("_text_model_")[0] for key in changed if "_text_model_" in key} == \
        {spec.kohya_prefix for spec in result.model.family.text_encoders}
    state = load_file(str(result.lora_path))
    assert {key.split(".", 1)[0] for key in state} == set(layers)  # one entry per adapted layer, nothing else
    suffixes = {key.split(".", 1)[1] for key in state}
    assert suffixes <= SUFFIXES[network] and suffixes >= SUFFIXES[network] - {"lokr_w2", "lokr_w2_a", "lokr_w2_b"}
    assert all(v.dtype == torch.float32 for v in state.values())
    te_prefixes = {key.split("_text_model_")[0] for key in state if "_text_model_" in key}
    assert te_prefixes == ({"lora_te"} if config.model.model == "tiny" else {"lora_te1", "lora_te2"})
    # kohya names SD1.5's U-Net layers as diffusers does, SDXL's in the original layout (its U-Net is a port of it)
    levels = {key.split(".")[0].removeprefix("lora_unet_").split("_blocks_")[0].split("_block_")[0]
              for key in state if key.startswith("lora_unet_")}
    assert levels <= ({"down", "mid", "up"} if config.model.model == "tiny" else {"input", "middle", "output"}), levels
    if network == "lokr":
        decomposed = any(key.endswith(".lokr_w2_a") for key in state)
        assert decomposed == (config.model.model == "tiny-sdxl")


def test_saved_file_rebuilds_the_trained_model_with_the_loaders_formulas(trained):
    """Every layer rebuilt from the file (fresh full-precision base weight + the LyCORIS/ComfyUI formula) is the
    layer lowvram trained, and the patched model gives the trained model's outputs."""
    config, result = trained
    state = load_file(str(result.lora_path))
    fresh = load_model(config.model.model)
    untouched_hidden, untouched_out = model_outputs(fresh)
    base_layers = {}
    for prefix, module in [("lora_unet", fresh.unet)] + [(spec.kohya_prefix, encoder) for spec, encoder in
                                                         zip(fresh.family.text_encoders, fresh.text_encoders)]:
        renamed = lora_files.kohya_unet_paths(module, fresh.family) if prefix == "lora_unet" else {}
        for name, layer in module.named_modules():
            path = name if prefix == "lora_unet" or name.startswith("text_model.") else f"text_model.{name}"
            base_layers[f"{prefix}_{renamed.get(path, path).replace('.', '_')}"] = layer
    for key, layer in adapted_layers(result.model):
        base = base_layers[key]
        rebuilt = lycoris_weight(state, key, base.weight.detach())
        torch.testing.assert_close(rebuilt, effective_weight(layer), rtol=1e-4, atol=1e-5)
        if config.network.network in ("loha", "lokr"):  # and the delta is peft's own
            torch.testing.assert_close(rebuilt - base.weight.detach(), layer.get_delta_weight("default").detach(),
                                       rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            base.weight.copy_(rebuilt)
    hidden, out = model_outputs(result.model)
    patched_hidden, patched_out = model_outputs(fresh)
    torch.testing.assert_close(patched_hidden, hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patched_out, out, rtol=1e-4, atol=1e-5)
    assert (out - untouched_out).abs().max() > 1e-3 and (hidden - untouched_hidden).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_lora_and_dora_reload_in_diffusers(trained, layout):
    config, result = trained
    network = config.network.network
    if network not in ("lora", "dora"):
        pytest.skip("diffusers loads only LoRA and DoRA")
    if (network, layout) == ("dora", "kohya"):
        pytest.skip("diffusers drops dora_scale from kohya files of SD/SDXL (it warns); the formula test covers it")
    path = result.lora_path if layout == "kohya" else result.lora_path.parent / f"{config.output_name}-diffusers"
    fresh = load_model(config.model.model)
    fresh.pipeline.load_lora_weights(str(path), adapter_name="reloaded")
    for component, module in networks.adapted_modules(result.model):
        theirs = getattr(fresh.pipeline, component)
        assert theirs.peft_config["reloaded"].use_dora == (network == "dora")
        if not config.network.block_ranks:
            assert theirs.peft_config["reloaded"].lora_alpha == 2.0 and theirs.peft_config["reloaded"].r == 4
        reloaded_layers = {name: layer for name, layer in theirs.named_modules()
                           if isinstance(layer, BaseTunerLayer) and "reloaded" in layer.r}
        for path, layer in networks.adapted_layers(module):  # each layer's own rank and alpha
            assert (reloaded_layers[path].r["reloaded"], reloaded_layers[path].lora_alpha["reloaded"]) == \
                networks.adapter_rank_alpha(layer), path
        ours = get_peft_model_state_dict(module)
        reloaded = get_peft_model_state_dict(theirs, adapter_name="reloaded")
        assert set(reloaded) == set(ours), component
        for key, value in ours.items():  # DoRA's magnitudes included, text encoders too
            torch.testing.assert_close(reloaded[key], value, msg=key)
    hidden, out = model_outputs(result.model)
    reloaded_hidden, reloaded_out = model_outputs(fresh)
    torch.testing.assert_close(reloaded_hidden, hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reloaded_out, out, rtol=1e-4, atol=1e-5)


def test_diffusers_layout_is_refused_for_loha_and_lokr(trained, tmp_path):
    config, result = trained
    if config.network.network in ("lora", "dora"):
        pytest.skip("saved in diffusers' layout by the run")
    with pytest.raises(LowvramError, match="diffusers loads only LoRA and DoRA") as error:
        lora_files.save_diffusers(result.model, tmp_path / "x-diffusers", "fp32")
    assert "ComfyUI and AUTOMATIC1111" in str(error.value) and len(str(error.value).splitlines()) == 1
    assert not (tmp_path / "x-diffusers").exists()


def test_the_config_refuses_the_diffusers_layout_for_loha_and_lokr_before_training():
    for network in ("loha", "lokr"):
        with pytest.raises(LowvramError, match=f"--format diffusers: diffusers cannot load {network}"):
            run_config(network=network, format="diffusers")


def test_the_kohya_file_reloads_through_peft_with_the_trained_behaviour(trained):
    """lowvram's own reader (what `generate` uses for DoRA, LoHa and LoKr) gives back the trained model."""
    config, result = trained
    fresh = load_model(config.model.model)
    assert lora_files.load_kohya(fresh, result.lora_path) == config.network.network
    hidden, out = model_outputs(result.model)
    reloaded_hidden, reloaded_out = model_outputs(fresh)
    torch.testing.assert_close(reloaded_hidden, hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reloaded_out, out, rtol=1e-4, atol=1e-5)
    muted = load_model(config.model.model)  # a DoRA too: its whole change is scaled, as ComfyUI scales it
    lora_files.load_kohya(muted, result.lora_path, strength=0.0)
    base_hidden, base_out = model_outputs(load_model(config.model.model))
    muted_hidden, muted_out = model_outputs(muted)
    torch.testing.assert_close(muted_out, base_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(muted_hidden, base_hidden, rtol=1e-5, atol=1e-6)
    if config.network.network != "dora":  # an update scaled, or the weights moved that share of the way: alike
        scaled, fused = load_model(config.model.model), load_model(config.model.model)
        lora_files.load_kohya(scaled, result.lora_path, strength=0.7)
        lora_files.load_kohya(fused, result.lora_path)
        assert sum(networks.fuse_adapters(module, 0.7) for module in (fused.unet, *fused.text_encoders)) > 0
        for got, expected in zip(model_outputs(fused), model_outputs(scaled)):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_generate_renders_with_every_network_type(trained, tmp_path):
    from lowvram.cli import main

    config, result = trained
    assert main(["generate", "--model", config.model.model, "--lora", str(result.lora_path), "--prompt", "x",
                 "--steps", "1", "--weight", "0.7", "--output", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_a_file_for_another_family_is_refused(trained):
    config, result = trained
    other = load_model("tiny-sdxl" if config.model.model == "tiny" else "tiny")
    with pytest.raises(LowvramError, match=rf"is a LoRA for lowvram's built-in {config.model.model} demo model \(its "
                                           rf"metadata says\), not for {re.escape(other.family.title)}"):
        lora_files.load_kohya(other, result.lora_path)


def test_metadata_names_the_network_as_kohya_and_lycoris_do(trained):
    config, result = trained
    meta = safe_open(str(result.lora_path), framework="pt").metadata()
    network = config.network.network
    layers = config.network.lora_layers
    assert meta["lowvram.network"] == network and meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2"
    assert meta["lowvram.lora_layers"] == layers
    conv_rank, conv_alpha = config.network.conv_rank_alpha
    conv = {"conv_dim": str(conv_rank), "conv_alpha": f"{conv_alpha:g}"} if layers == "full" else {}  # kohya's LoCon
    conv |= {kohya: BLOCKS[ours] for ours, kohya in BLOCK_OPTIONS.items() if getattr(config.network, ours)}
    assert conv_rank == (2 if config.network.conv_rank else 4)
    if network == "lora":
        assert meta["ss_network_module"] == "networks.lora"
        assert json.loads(meta.get("ss_network_args", "{}")) == conv
        return
    assert meta["ss_network_module"] == "lycoris.kohya"
    expected = {"dora": {"algo": "lora", "dora_wd": "True", "wd_on_output": "True"}, "loha": {"algo": "loha"},
                "lokr": {"algo": "lokr", "factor": "-1"}}[network]
    preset = {"attn": "attn-only", "attn-mlp": "attn-mlp", "full": "full"}[layers]
    assert json.loads(meta["ss_network_args"]) == expected | {"preset": preset} | conv


def test_3x3_convolutions_take_their_own_rank_and_alpha(trained):
    """kohya's conv_dim/conv_alpha: the 3x3 convolutions take --conv-rank and --conv-alpha; linear layers and 1x1
    convolutions keep --rank and --alpha (by default, the convolutions too)."""
    config, result = trained
    if config.network.lora_layers != "full":
        pytest.skip("no convolutions adapted")
    conv_rank, conv_alpha = config.network.conv_rank_alpha
    blocks = resolve_run(config, detect()).blocks  # per-block ranks and alphas, where the run sets them
    renamed = lora_files.kohya_unet_paths(result.model.unet, result.model.family)  # SDXL's: the original layout
    unet_paths = {"lora_unet_" + renamed.get(path, path).replace(".", "_"): path
                  for path, _ in networks.adapted_layers(result.model.unet)}
    state = load_file(str(result.lora_path))
    seen = set()
    for key, layer in adapted_layers(result.model):
        base = layer.get_base_layer()
        spatial = isinstance(base, torch.nn.Conv2d) and base.kernel_size != (1, 1)
        seen.add(spatial)
        down = state.get(f"{key}.lora_down.weight", state.get(f"{key}.hada_w1_b"))
        in_unet = key in unet_paths  # (the text encoders' layers take --rank and --alpha)
        expected = networks.planned_rank_alpha(unet_paths.get(key, key), spatial, (4, 2.0), (conv_rank, conv_alpha),
                                               blocks if in_unet else None)
        assert (down.shape[0], state[f"{key}.alpha"].item()) == expected, key
    assert seen == {True, False}


def test_metadata_records_lokr_factor_and_module_dropout():
    meta = lora_files.network_metadata(NetworkConfig(network="lokr", rank=8, alpha=4.0, module_dropout=0.1,
                                                     lokr_factor=8))
    assert json.loads(meta["ss_network_args"]) == {"algo": "lokr", "factor": "8", "module_dropout": "0.1",
                                                   "preset": "attn-only"}
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4"
    assert lora_files.network_metadata(NetworkConfig(rank=16))["ss_network_alpha"] == "16"  # alpha defaults to rank


def test_checkpoint_restores_every_network_type(trained):
    """Resuming loads the checkpoint's adapters (LoHa/LoKr/DoRA parameters included) into a fresh model."""
    config, result = trained
    fresh = load_model(config.model.model)
    torch.manual_seed(1)  # another initialisation than the run's
    blocks = resolve_run(config, detect()).blocks
    params = networks.add_lora(fresh, config.network, config.alpha, True, blocks)
    optimizer = torch.optim.AdamW(optimizer_groups(fresh, params, config, blocks))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    found = checkpoint_folders.latest(checkpoint_folders.checkpoint_root(result.lora_path.parent))
    position = checkpoint.load(found, dict(networks.adapted_modules(fresh)), optimizer, scheduler,
                               types.SimpleNamespace(scaler=None, process_index=0, num_processes=1))
    assert position.step == 3
    for (_, module), (_, theirs) in zip(networks.adapted_modules(result.model), networks.adapted_modules(fresh)):
        ours, restored = get_peft_model_state_dict(module), get_peft_model_state_dict(theirs)
        assert set(ours) == set(restored)
        for key, value in ours.items():
            assert torch.equal(restored[key], value), key


@pytest.fixture(scope="module")
def pristine():
    return load_model("tiny")


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
@pytest.mark.parametrize("network", ["lora", "dora", "loha", "lokr"])
@pytest.mark.parametrize("layers", ["attn", "full"])  # full: convolutions too, stored in each format
def test_each_network_trains_on_each_weight_format_or_is_refused_clearly(pristine, network, fmt, layers):
    model = copy.copy(pristine)
    model.pipeline = copy.copy(pristine.pipeline)
    model.pipeline.unet = copy.deepcopy(pristine.unet)
    convert_frozen(model.unet, fmt, torch.float32)
    config = NetworkConfig(network=network, rank=4, lora_layers=layers)
    if (network, fmt) in REFUSED:
        with pytest.raises(LowvramError) as error:
            networks.add_lora(model, config, 4.0, False)
        message = str(error.value)
        assert f"--network {network}" in message and f"--unet-weights {fmt}" in message and "use " in message
        assert len(message.splitlines()) == 1
        assert not any(isinstance(m, BaseTunerLayer) for m in model.unet.modules())  # nothing was added
        return
    params = networks.add_lora(model, config, 4.0, False)["unet"]
    assert params and all(p.dtype == torch.float32 for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    latents, hidden = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 5, 32, generator=generator)
    before = [p.detach().clone() for p in params]
    for _ in range(2):  # two steps: a layer that breaks after its first use (bnb-int8 + DoRA on the CPU) shows
        loss = model.unet(latents, torch.tensor([10]), encoder_hidden_states=hidden).sample.pow(2).mean()
        assert torch.isfinite(loss)
        loss.backward()
        # by the second step every factor has a gradient (a zero-initialised one only from the second on), the
        # convolutions' adapters too whatever their frozen layer's storage; not the inert time projections
        silent = [name for name, p in model.unet.named_parameters() if p.requires_grad and "time_emb_proj" not in name
                  and (p.grad is None or not p.grad.any())]
        optimizer.step()
        optimizer.zero_grad()
    assert not silent, silent[:3]
    assert any(not torch.equal(p, b) for p, b in zip(params, before))


@pytest.fixture(scope="module")
def bf16_unet():
    return load_model("tiny").unet.to(torch.bfloat16)


@pytest.mark.parametrize("network,fewer", [("lora", True), ("lokr", True), ("dora", False)])
def test_without_peft_input_casts_autocast_computes_the_same_values_with_fewer_copies(network, fewer, bf16_unet):
    """Under autocast, training turns off peft's cast of each adapted layer's input to fp32 (autocast casts it
    straight back): outputs and gradients stay bit-identical in bf16, and the activation copies are gone. DoRA
    keeps its casts (without them its values change)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountCopies(TorchDispatchMode):
        copies = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].dim() >= 3:  # an activation, not a weight
                self.copies += 1
            return func(*args, **(kwargs or {}))

    def step(cast: bool):
        torch.manual_seed(0)
        unet = copy.deepcopy(bf16_unet)
        networks.add_adapter(unet, ("to_q", "to_k", "to_v", "to_out.0"), 4, 4.0, 0.0, network)
        for p in unet.parameters():  # a nonzero delta, so the adapter paths carry something
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
        networks.cast_inputs(unet, cast)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16)
        hidden = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2),
                             dtype=torch.bfloat16)
        with CountCopies() as counter, torch.autocast("cpu", torch.bfloat16):
            out = unet(latents, torch.tensor([500]), encoder_hidden_states=hidden).sample
            out.float().square().mean().backward()
        return out.detach(), [p.grad for p in unet.parameters() if p.requires_grad], counter.copies

    (out, grads, copies), (out_fast, grads_fast, copies_fast) = step(True), step(False)
    assert torch.equal(out, out_fast) and all(torch.equal(a, b) for a, b in zip(grads, grads_fast))
    assert (copies_fast < copies) == fewer and copies_fast <= copies, (copies, copies_fast)


# at factor 32, above 320's root, LyCORIS splits 320 as 10 x 32 but 1280 as 32 x 40: the bound, from the narrowest
# width's split, counts the wider layers' whole factors by it too (a few MiB over at most)
@pytest.mark.parametrize(("family", "layers", "factor", "slack"), [
    ("sd15", "full", 6, 2.5), ("sdxl", "attn-mlp", 8, 2.5), ("sd15", "attn", -1, 2.5), ("sd15", "attn", 32, 5)])
def test_a_full_rank_lokr_trains_at_scale_1_and_the_planner_bounds_its_weights(family, layers, factor, slack):
    """kohya_ss's "full-rank" LoKr recipes (rank 100000, alpha 1, a factor): both Kronecker factors whole, which
    LyCORIS applies at scale 1 (peft would scale by alpha/rank, 1e-5), and the planner counts them by the whole
    factors' size (LoRA's count at that rank would be hundreds of GiB)."""
    from diffusers import UNet2DConditionModel

    from lowvram.models.families import FAMILIES, LORA_LAYERS
    from lowvram.plan.estimate import Workload, adapter_params, family_data

    config = UNet2DConditionModel.load_config(str(FAMILIES[family].config_dir / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    params = networks.add_adapter(unet, LORA_LAYERS[layers]["unet"], 100000, 1.0, 0.0, network="lokr",
                                  lokr_factor=factor)
    assert {layer.scaling["default"] for _, layer in networks.adapted_layers(unet)} == {1.0}
    actual = sum(p.numel() for p in params)
    work = Workload(FAMILIES[family], 512, rank=100000, network="lokr", lokr_factor=factor, lora_layers=layers)
    counted = adapter_params(family_data(FAMILIES[family]), work, ["unet"])
    assert actual <= counted <= slack * actual, (actual, counted)


def test_switching_adapters_off_and_on_keeps_frozen_ones_frozen():
    """Prior prediction runs the text encoders without their adapters; adapters frozen by --text-encoder-until
    must stay frozen after it (peft's switch back turns every adapter's gradients on)."""
    model = load_model("tiny")
    params = networks.add_lora(model, NetworkConfig(rank=4), 4.0, True)
    encoder = model.text_encoders[0]
    frozen = [p for p in encoder.parameters() if p.requires_grad]
    assert frozen and params["unet"]
    for param in frozen:
        param.requires_grad_(False)
    with networks.adapters_off(encoder, model.unet):
        assert not any(p.requires_grad for p in model.unet.parameters())
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(p.requires_grad for p in params["unet"])


def test_a_fresh_loha_starts_as_lycoris_draws_it():
    """LyCORIS's LohaModule: w1_a ~ N(0, 0.1), w1_b and w2_b ~ N(0, 1), w2_a zero (the update starts at zero); peft's
    kaiming start learns about twenty times slower, so a LyCORIS LoHa's learning rate would not carry over."""
    model = load_model("tiny")
    networks.add_adapter(model.unet, model.family.lora_targets("unet"), 8, 8.0, 0.0, network="loha")
    layers = [layer for _, layer in networks.adapted_layers(model.unet)]
    weights = {name: torch.cat([getattr(layer, name)[networks.ADAPTER].flatten() for layer in layers])
               for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    assert len(layers) > 10 and not weights["hada_w2_a"].any()
    for name, std in (("hada_w1_a", 0.1), ("hada_w1_b", 1.0), ("hada_w2_b", 1.0)):
        assert weights[name].std().item() == pytest.approx(std, rel=0.1), name
        assert abs(weights[name].mean().item()) < 0.1 * std, name


def test_a_full_matrix_lokr_saves_in_fp16_with_lycoris_unread_alpha(tmp_path):
    """kohya_ss's full-rank LoKr (network_dim 100000): its alpha, LyCORIS's rank, is inf in fp16, and the run ended
    'refusing to write ... non-finite values' with its weights lost; then it was written inf, and lowvram refused its
    own file as broken. No reader scales a full matrix by it: kept in fp32, and read where inf (LyCORIS's own)."""
    runs = {precision: train(run_config(output=str(tmp_path / precision), max_steps=1, network="lokr", rank=100000,
                                        alpha=1, lokr_factor=8, save_precision=precision)).lora_path
            for precision in ("fp16", "fp32")}
    half, full = (load_file(str(runs[precision])) for precision in ("fp16", "fp32"))
    alphas = [key for key in half if key.endswith(".alpha")]
    assert alphas and all(half[key].dtype == torch.float32 and half[key] == 100000 for key in alphas)
    assert all(torch.isfinite(tensor).all() for key, tensor in half.items())
    assert all(torch.allclose(half[key].float(), full[key], rtol=1e-2, atol=1e-4) for key in half if key not in alphas)
    assert lora_files.layers_problem(lora_files.by_layer(half)) is None
    lycoris = half | {key: torch.tensor(float("inf"), dtype=torch.float16) for key in alphas}  # (LyCORIS's fp16 file)
    assert lora_files.layers_problem(lora_files.by_layer(lycoris)) is None
    diverged = lycoris | {next(key for key in half if key.endswith("lokr_w1")): torch.tensor(float("nan"))}
    assert "holds NaN or infinite values" in lora_files.layers_problem(lora_files.by_layer(diverged))


def declared_refusals() -> list[tuple[str, str]]:
    from lowvram.formats import WEIGHT_FORMATS

    return sorted((network, name) for name, f in WEIGHT_FORMATS.items() for network, _, _ in f.refused_networks)


def test_the_declared_refusals_are_the_ones_the_layer_test_refuses():
    """lowvram.formats declares what the planner leaves out and the options refuse (the CPU's own bnb-int8 DoRA
    apart: on a GPU it trains)."""
    assert set(declared_refusals()) == REFUSED - {("dora", "bnb-int8")}


@pytest.mark.parametrize("network, fmt", declared_refusals())
def test_peft_itself_cannot_train_each_declared_refusal(pristine, network, fmt):
    """Past lowvram's refusal, peft breaks on each pair: it raises, or (DoRA over W8A8's int8) its magnitude is
    read from the stored 8-bit values, not the weights. A peft that learns one fails this test, and the pair can be
    offered again."""
    unet = copy.deepcopy(pristine.unet)
    convert_frozen(unet, fmt, torch.float32)
    try:
        networks.add_adapter(unet, pristine.family.lora_targets("unet", "attn"), 4, 4.0, 0.0, network)
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 5, 32)).sample.mean(
            ).backward()
    except RuntimeError:
        return
    weights = dict(pristine.unet.named_modules())
    assert network == "dora" and not all(torch.allclose(
        layer.lora_magnitude_vector["default"].weight.detach().flatten(),
        weights[name].weight.detach().float().flatten(1).norm(dim=1), rtol=0.05)
        for name, layer in networks.adapted_layers(unet))
