"""Other trainers' kohya/LyCORIS files on the tiny models: what ComfyUI and LyCORIS apply exactly is applied
exactly (a missing alpha, a LoCon's Tucker core, a LoKr whose factor only its shapes tell, SDXL's `lora_te_`
keys), by `generate`, `resize` and `merge` alike; what peft cannot apply (input-axis DoRA, LoHa's Tucker core) is
refused in one line that names the file and the feature. The files are built here by hand and the expected
weights computed from the formats' own formulas (LyCORIS's module forward, kohya's alpha/rank)."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_config
from safetensors.torch import load_file, save_file

from lowvram.adapters import lora_files, networks
from lowvram.cli import main
from lowvram.errors import LowvramError
from lowvram.generate import _read_with_peft, apply_loras
from lowvram.lora_header import lokr_factor, network_options
from lowvram.models.loading import load_model

TE_Q = "encoder.layers.0.self_attn.q_proj"  # square (32 x 32) on tiny's and tiny-sdxl's first text encoder
CONV = "down_blocks.0.resnets.0.conv1"  # a 3x3 convolution, 32 -> 32, on tiny
MID_Q = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"  # 64 x 64: LoKr's factor 4 and -1 split it apart


def kohya_key(prefix: str, path: str) -> str:
    text = prefix.startswith("lora_te")
    return f"{prefix}_{('text_model.' + path if text else path).replace('.', '_')}"


def random(*shape, seed=[0]):  # noqa: B006 (a counter: each call draws new values)
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0])) * 0.3


def weight_of(layer: torch.nn.Module) -> torch.Tensor:
    """The weight a Linear layer, adapted or not (by lowvram's reader or diffusers'), really applies: its
    forward on the identity, less its bias."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    with torch.no_grad():
        eye = torch.eye(base.in_features)
        return (layer(eye) - (0 if base.bias is None else base.bias)).T


def test_input_axis_dora_is_refused_in_one_line_where_files_are_read(tmp_path):
    """LyCORIS's wd_on_output=False keeps dora_scale (1, in); on a square layer it fits peft's (out,) magnitude
    and was applied on the wrong axis."""
    path = tmp_path / "dora_in.safetensors"
    base = kohya_key("lora_te", TE_Q)
    save_file({f"{base}.lora_down.weight": random(4, 32), f"{base}.lora_up.weight": random(32, 4),
               f"{base}.alpha": torch.tensor(2.0), f"{base}.dora_scale": random(1, 32).abs() + 1}, str(path))
    with pytest.raises(LowvramError) as generated:
        apply_loras(load_model("tiny"), [(path, 1.0)])
    config = run_config(network="dora", rank=4, alpha=2.0, train_text_encoder=True)
    model = load_model("tiny")
    networks.add_lora(model, config.network, config.alpha, True)
    with pytest.raises(LowvramError) as started:
        lora_files.start_from(model, path, config.network)
    for error, flag in ((generated, "--lora"), (started, "--network-weights")):
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{flag}: {path} is a DoRA on the input axis")
        assert "wd_on_output=True" in message


def test_a_layer_without_alpha_is_applied_at_scale_1_beside_layers_with_one(tmp_path):
    """kohya and ComfyUI read a missing alpha as alpha = rank; diffusers' converter gave such layers another
    layer's alpha."""
    model = load_model("tiny")
    paths = [name for name, layer in model.unet.named_modules()
             if isinstance(layer, torch.nn.Linear) and (".attn1.to_" in name or ".attn2.to_q" in name)]
    tensors, expected = {}, {}
    for name in paths:
        base, weight = kohya_key("lora_unet", name), model.unet.get_submodule(name).weight
        down, up = random(4, weight.shape[1]), random(weight.shape[0], 4)
        tensors |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up}
        scale = 1.0  # attn2's layers hold no alpha
        if "attn1" in name:
            tensors[f"{base}.alpha"], scale = torch.tensor(1.0), 1.0 / 4
        expected[name] = weight.detach() + scale * up @ down
    path = tmp_path / "partial_alpha.safetensors"
    save_file(tensors, str(path))
    apply_loras(model, [(path, 1.0)])
    for name, weight in expected.items():
        torch.testing.assert_close(weight_of(model.unet.get_submodule(name)), weight, atol=1e-5, rtol=1e-5,
                                   msg=name)


@pytest.fixture
def tucker(tmp_path):
    """(file, base conv, expected forward) of a LoCon whose 3x3 convolution is Tucker-decomposed, as LyCORIS's
    use_tucker saves it: down 1x1, the core lora_mid 3x3 (the layer's stride and padding), up 1x1."""
    conv = load_model("tiny").unet.get_submodule(CONV)
    down, mid, up = random(2, 32, 1, 1), random(2, 2, 3, 3), random(32, 2, 1, 1)
    base = kohya_key("lora_unet", CONV)
    path = tmp_path / "tucker.safetensors"
    save_file({f"{base}.lora_down.weight": down, f"{base}.lora_mid.weight": mid, f"{base}.lora_up.weight": up,
               f"{base}.alpha": torch.tensor(1.0)}, str(path))

    def forward(x, strength=1.0):  # LyCORIS's LoConModule: the layer plus alpha/rank x up(mid(down(x)))
        inner = F.conv2d(F.conv2d(x, down), mid, stride=conv.stride, padding=conv.padding)
        return conv(x) + strength * 0.5 * F.conv2d(inner, up)

    return path, conv, forward


def test_a_tucker_locon_is_applied_exactly_by_generate(tucker):
    path, _, forward = tucker
    model = load_model("tiny")
    apply_loras(model, [(path, 1.0)])
    x = random(1, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.unet.get_submodule(CONV)(x), forward(x), atol=1e-5, rtol=1e-5)


def test_resize_and_merge_keep_a_tucker_core(tucker, tmp_path):
    """The core folded into a 3x3 down matrix keeps the update exact at the same rank; dropped, the update was
    a 1x1 convolution's."""
    path, conv, forward = tucker
    resized, merged = tmp_path / "resized.safetensors", tmp_path / "merged.safetensors"
    assert main(["resize", str(path), "--rank", "2", "--output", str(resized)]) == 0
    assert main(["merge", f"{path}:0.5", "--rank", "2", "--output", str(merged)]) == 0
    x = random(1, 32, 8, 8)
    for out, strength in ((resized, 1.0), (merged, 0.5)):
        tensors = {key.split(".", 1)[1]: tensor for key, tensor in load_file(str(out)).items()}
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        assert "lora_mid.weight" not in tensors and down.shape == (2, 32, 3, 3)
        scale = float(tensors["alpha"]) / down.shape[0]
        with torch.no_grad():
            got = conv(x) + scale * F.conv2d(F.conv2d(x, down, stride=conv.stride, padding=conv.padding), up)
            torch.testing.assert_close(got, forward(x, strength), atol=1e-5, rtol=1e-5, msg=str(out))


def test_a_lokr_without_its_factor_in_the_metadata_takes_it_from_its_shapes(tmp_path):
    """LyCORIS's factor 4 splits 64 as 4 x 16, its default (-1) as 8 x 8: ComfyUI reads the shapes, peft needs
    the factor, which the shapes imply when no ss_network_args says it."""
    model = load_model("tiny")
    w1, w2_a, w2_b = random(4, 4), random(16, 2), random(2, 16)
    base = kohya_key("lora_unet", MID_Q)
    path = tmp_path / "lokr_f4.safetensors"
    save_file({f"{base}.lokr_w1": w1, f"{base}.lokr_w2_a": w2_a, f"{base}.lokr_w2_b": w2_b,
               f"{base}.alpha": torch.tensor(1.0)}, str(path))
    expected = model.unet.get_submodule(MID_Q).weight.detach() + torch.kron(w1, w2_a @ w2_b) * 1.0 / 2
    apply_loras(model, [(path, 1.0)])
    torch.testing.assert_close(weight_of(model.unet.get_submodule(MID_Q)), expected, atol=1e-5, rtol=1e-5)
    assert network_options(path)["lokr_factor"] == 4  # what --network-weights trains it further with


def test_a_lycoris_lokr_whose_factor_exceeds_a_sides_root_applies_and_trains_on(tmp_path):
    """LyCORIS splits a side the smaller first: at factor 8, 32 is 4 x 8 and 64 is 8 x 8. peft kept the factor
    first (8 x 4), so no peft factor fit both layers: the file was refused as "another model family"."""
    down_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 32 x 32
    tensors, expected = {}, {}
    model = load_model("tiny")
    for name, (first, second) in ((down_q, (4, 8)), (MID_Q, (8, 8))):
        w1, w2_a, w2_b = random(first, first), random(second, 1), random(1, second)
        base = kohya_key("lora_unet", name)
        tensors |= {f"{base}.lokr_w1": w1, f"{base}.lokr_w2_a": w2_a, f"{base}.lokr_w2_b": w2_b,
                    f"{base}.alpha": torch.tensor(1.0)}
        expected[name] = model.unet.get_submodule(name).weight.detach() + torch.kron(w1, w2_a @ w2_b)
    path = tmp_path / "lycoris_lokr_f8.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_module": "lycoris.kohya",
                                            "ss_network_args": json.dumps({"algo": "lokr", "factor": "8"})})
    apply_loras(model, [(path, 1.0)])
    again = load_model("tiny")
    config = run_config(model="tiny", network="lokr", lokr_factor=8, rank=1, alpha=1.0)
    networks.add_lora(again, config.network, config.alpha, False)
    assert lora_files.start_from(again, path, config.network) == 2
    for name, weight in expected.items():
        torch.testing.assert_close(weight_of(model.unet.get_submodule(name)), weight, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(weight_of(again.unet.get_submodule(name)), weight, atol=1e-5, rtol=1e-5, msg=name)
    assert network_options(path)["lokr_factor"] == 8
    # without the metadata: at factor 16 (above both sides' roots) 32 is 2 x 16 and 64 is 4 x 16
    assert lokr_factor({"down": {"lokr_w1": (2, 2), "lokr_w2_a": (16, 1)},
                        "mid": {"lokr_w1": (4, 4), "lokr_w2_a": (16, 1)}}) == 16


@pytest.mark.parametrize("alphas", [(2.0, 2.0), (1.0, 3.0)], ids=["one-alpha", "alphas-differ"])
def test_sdxl_lora_te_keys_are_the_first_text_encoders_on_both_paths(alphas, tmp_path):
    """ComfyUI (and diffusers' converter) read lora_te_ as CLIP-L on SDXL; lowvram's own reader, which takes the
    files whose alphas differ, did not."""
    model = load_model("tiny-sdxl")
    unet_q = next(name for name, _ in model.unet.named_modules() if name.endswith("attn1.to_q"))
    # a whole attention (diffusers' converter refuses a lone projection) and a U-Net layer
    layers = [("lora_te", model.text_encoders[0], TE_Q[:-6] + proj) for proj in ("q_proj", "k_proj", "v_proj",
                                                                                   "out_proj")]
    layers.append(("lora_unet", model.unet, unet_q))
    tensors, expected = {}, {}
    for (prefix, part, name), alpha in zip(layers, alphas * 3):
        base, weight = kohya_key(prefix, name), part.get_submodule(name).weight
        down, up = random(4, weight.shape[1]), random(weight.shape[0], 4)
        tensors |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up, f"{base}.alpha": torch.tensor(alpha)}
        expected[part, name] = weight.detach() + alpha / 4 * up @ down
    path = tmp_path / "te_prefix.safetensors"
    save_file(tensors, str(path))
    apply_loras(model, [(path, 1.0)])
    for (part, name), weight in expected.items():
        torch.testing.assert_close(weight_of(part.get_submodule(name)), weight, atol=1e-5, rtol=1e-5, msg=name)
    if alphas[0] == alphas[1]:  # --network-weights trains such a file further (its one rank and alpha)
        config = run_config(model="tiny-sdxl", rank=4, alpha=alphas[0], train_text_encoder=True)
        again = load_model("tiny-sdxl")
        networks.add_lora(again, config.network, config.alpha, True)
        assert lora_files.start_from(again, path, config.network) == len(layers)
        for (part, name), weight in expected.items():
            own = (again.unet if part is model.unet else again.text_encoders[0]).get_submodule(name)
            torch.testing.assert_close(weight_of(own), weight, atol=1e-5, rtol=1e-5, msg=name)


def test_a_loha_tucker_core_is_refused_in_one_line_naming_it(tmp_path):
    """peft's LoHa holds no Tucker core for it: named, not dropped nor a state-dict error."""
    base = kohya_key("lora_te", TE_Q)
    path = tmp_path / "loha_tucker.safetensors"
    save_file({f"{base}.hada_w1_a": random(32, 2), f"{base}.hada_w1_b": random(2, 32), f"{base}.hada_w2_a":
               random(32, 2), f"{base}.hada_w2_b": random(2, 32), f"{base}.hada_t1": random(2, 2, 1, 1),
               f"{base}.alpha": torch.tensor(2.0)}, str(path))
    with pytest.raises(LowvramError) as error:
        apply_loras(load_model("tiny"), [(path, 1.0)])
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--lora: {path} holds LoHa's Tucker core (LyCORIS use_tucker)")


def test_merging_sdxl_files_of_both_namings_adds_each_layers_updates(tmp_path):
    """lowvram's earlier SDXL files name the U-Net's layers as diffusers does, kohya's (and lowvram's now) in the
    original layout: merged, each layer is summed under kohya's name, not kept twice (readers then kept one)."""
    from lowvram.models.ldm_names import ldm_path, unet_table

    unet = load_model("tiny-sdxl").unet
    names = [name for name, _ in unet.named_modules()]
    table = unet_table(dict(unet.config), lambda head: any(name.startswith(head) for name in names))
    layers = [name for name in names if name.endswith((".attn1.to_q", ".attn2.to_k", ".proj_in"))][:4]
    files, deltas = [], {}
    for which, weight in (("earlier", 1.0), ("kohya", 0.5)):
        tensors = {}
        for name in layers:
            shape = unet.get_submodule(name).weight.shape
            down, up = random(4, shape[1]), random(shape[0], 4)
            key = "lora_unet_" + (name if which == "earlier" else ldm_path(name, table)).replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(4.0)}
            original = "lora_unet_" + ldm_path(name, table).replace(".", "_")
            deltas[original] = deltas.get(original, 0) + weight * up @ down
        files.append(f"{tmp_path / which}.safetensors:{weight}")
        save_file(tensors, str(tmp_path / f"{which}.safetensors"))
    assert main(["merge", *files, "--rank", "8", "--output", str(tmp_path / "merged.safetensors")]) == 0
    merged = load_file(str(tmp_path / "merged.safetensors"))
    assert {key.split(".")[0] for key in merged} == deltas.keys()  # each layer once, under kohya's name
    for base, delta in deltas.items():
        torch.testing.assert_close(merged[f"{base}.lora_up.weight"] @ merged[f"{base}.lora_down.weight"], delta,
                                   rtol=1e-4, atol=1e-5)
    both = tmp_path / "both.safetensors"  # the two files' tensors in one: a layer under two names
    save_file(load_file(str(tmp_path / "earlier.safetensors")) | load_file(str(tmp_path / "kohya.safetensors")),
              str(both))
    with pytest.raises(LowvramError, match="holds one layer under two names .*; lowvram merge adds"):
        lora_files.load_kohya(load_model("tiny-sdxl"), both)
    config = run_config(model="tiny-sdxl", rank=4, alpha=4.0, lora_layers="full")
    model = load_model("tiny-sdxl")
    networks.add_lora(model, config.network, config.alpha, False)
    with pytest.raises(LowvramError, match="--network-weights: .* holds one layer under two names"):
        lora_files.start_from(model, both, config.network)


def _kohya_layers(module: torch.nn.Module, prefix: str, suffixes: tuple[str, ...], rank: int = 4) -> dict:
    """A kohya LoRA of `module`'s Linear layers whose names end in `suffixes`, at alpha = rank, random both ways."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(suffixes):
            base = f"{prefix}_{name.replace('.', '_')}"
            tensors[f"{base}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator)
            tensors[f"{base}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator)
            tensors[f"{base}.alpha"] = torch.tensor(float(rank))
    return tensors


def test_generate_applies_a_kohya_text_encoder_lora_without_out_proj_whole(tmp_path):
    """A kohya LoRA of CLIP's q/k/v and MLP without out_proj: diffusers' converter took it for its newer layout and
    dropped q/k/v unsaid (the image differed from the merged model's); lowvram's reader places every layer."""
    model = load_model("tiny")
    encoder = model.text_encoders[0]
    tensors = _kohya_layers(encoder, "lora_te_text_model", ("q_proj", "k_proj", "v_proj", "fc1", "fc2"))
    tensors = {key.replace("lora_te_text_model_text_model_", "lora_te_text_model_"): t for key, t in tensors.items()}
    path = tmp_path / "te.safetensors"
    save_file(tensors, str(path))
    apply_loras(model, [(path, 1.0)])
    adapted = {name.rsplit(".", 1)[-1] for name, _ in networks.adapted_layers(model.text_encoders[0])}
    assert adapted == {"q_proj", "k_proj", "v_proj", "fc1", "fc2"}


def test_a_full_matrix_lokr_applies_and_files_lowvram_cannot_apply_whole_are_refused(tmp_path):
    """A LyCORIS LoKr with whole Kronecker factors (full_matrix) was applied as zero, unsaid (now it is applied); a
    file without a layer's tensor, or in OneTrainer's dotted naming, is refused in one line."""
    model = load_model("tiny")
    name = next(n for n, layer in model.unet.named_modules() if n.endswith("ff.net.0.proj"))  # 256 x 32
    out_features, in_features = dict(model.unet.named_modules())[name].weight.shape
    base = "lora_unet_" + name.replace(".", "_")
    whole = tmp_path / "lokr.safetensors"  # LyCORIS's full_matrix LoKr: applied unscaled, whatever its alpha
    first, second = random(4, 4), random(out_features // 4, in_features // 4)
    original = weight_of(dict(model.unet.named_modules())[name])
    for alpha in (4.0, 10000.0):  # (LyCORIS stores its dim, 10000 in SimpleTuner's full_matrix recipe)
        save_file({f"{base}.lokr_w1": first, f"{base}.lokr_w2": second, f"{base}.alpha": torch.tensor(alpha)},
                  str(whole))
        applied = load_model("tiny")
        lora_files.load_kohya(applied, whole)
        torch.testing.assert_close(weight_of(dict(applied.unet.named_modules())[name]),
                                   original + torch.kron(first, second), rtol=1e-4, atol=1e-5)
    torn = tmp_path / "torn.safetensors"  # a layer without its lora_down: peft's random start stood in for it
    whole_layer = base.replace("ff_net_0_proj", "attn1_to_q")  # 32 x 32
    save_file({f"{base}.lora_up.weight": torch.randn(out_features, 4), f"{base}.alpha": torch.tensor(4.0),
               f"{whole_layer}.lora_down.weight": torch.randn(4, 32),
               f"{whole_layer}.lora_up.weight": torch.randn(32, 4), f"{whole_layer}.alpha": torch.tensor(4.0)},
              str(torn))
    with pytest.raises(LowvramError, match=r"lacks a tensor of a layer \(.*ff\.net\.0\.proj\.lora_A\.default\.weight, "
                                           r"1 in all\): is the file whole\?"):
        lora_files.load_kohya(load_model("tiny"), torn)
    dotted = tmp_path / "dotted.safetensors"
    save_file({f"lora_unet.{name}.lora_down.weight": torch.randn(4, in_features),
               f"lora_unet.{name}.lora_up.weight": torch.randn(out_features, 4)}, str(dotted))
    with pytest.raises(LowvramError, match=r"diffusers placed none of its layers in tiny SD"):
        apply_loras(load_model("tiny"), [(dotted, 1.0)])


def test_a_dora_at_any_strength_is_applied_as_comfyui_weighs_it(tmp_path):
    """ComfyUI's weight_decompose: W + s (m (W + dW) / |W + dW| - W), the DoRA's whole change scaled (peft's own
    scaling scales its low-rank part alone: at 0 it still changed the model). Alone, or stacked with another file."""
    path = tmp_path / "dora.safetensors"
    base = kohya_key("lora_te", TE_Q)
    down, up, scale = random(4, 32), random(32, 4), random(32, 1).abs() + 1
    save_file({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
               f"{base}.alpha": torch.tensor(2.0), f"{base}.dora_scale": scale}, str(path))

    def q_proj(model):
        return next(layer for name, layer in model.text_encoders[0].named_modules() if name.endswith(TE_Q))

    original = weight_of(q_proj(load_model("tiny")))
    changed = original + up @ down * (2.0 / 4)
    whole = scale * changed / changed.norm(dim=1, keepdim=True)
    for strength in (1.0, 0.5, 0.0, -0.5):
        model = load_model("tiny")
        apply_loras(model, [(path, strength)])
        expected = original + strength * (whole - original)
        torch.testing.assert_close(weight_of(q_proj(model)), expected, rtol=1e-4, atol=1e-5)
    stacked = load_model("tiny")  # fused one after another, as several files are
    apply_loras(stacked, [(path, 0.5), (path, 0.0)])
    torch.testing.assert_close(weight_of(q_proj(stacked)), original + 0.5 * (whole - original), rtol=1e-4,
                               atol=1e-5)


def test_a_broken_file_is_one_line_for_every_reader(tmp_path, capsys):
    """A LoRA of NaN values (a diverged run's), or of down and up weights of different ranks, was a linalg or
    reshape traceback in resize and merge, and generate drew a black image without a word."""
    base = kohya_key("lora_unet", MID_Q)
    down, up = random(4, 64), random(64, 4)
    files = {"nan": {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up.clone().fill_(float("nan"))},
             "ranks": {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": random(64, 8)}}
    says = {"nan": f"holds NaN or infinite values at {base} (lora_up.weight): the file is broken",
            "ranks": f"is broken at {base}: its down and up weights are of ranks 4 and 8"}
    for name, tensors in files.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors | {f"{base}.alpha": torch.tensor(4.0)}, str(path))
        for argv in (["resize", str(path), "--rank", "2", "--output", str(tmp_path / "r.safetensors")],
                     ["merge", str(path), "--rank", "2", "--output", str(tmp_path / "m.safetensors")],
                     ["generate", "--model", "tiny", "--lora", str(path), "--prompt", "x", "--steps", "1",
                      "--output", str(tmp_path / "g.png")]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and says[name] in err[0], (argv, err)
    good = tmp_path / "good.safetensors"
    save_file({f"{base}.lora_down.weight": down.half(), f"{base}.lora_up.weight": up.half(),  # (kohya's fp16)
               f"{base}.alpha": torch.tensor(4.0)}, str(good))
    assert main(["merge", f"{good}:1e30", "--rank", "2", "--output", str(tmp_path / "m.safetensors")]) == 2
    assert "would hold NaN or infinite values" in capsys.readouterr().err  # (it wrote 64 infinite tensors)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("family", ["tiny", "tiny-sdxl"])
def test_a_onetrainer_omi_file_is_applied_and_trained_on_as_its_kohya_twin(family, tmp_path, capsys):
    """OneTrainer's omi layout (every OneTrainer backup's LoRA): `unet.` + the original layout's dotted path,
    `clip_l.`/`clip_g.` + the text model's; it was "no LoRA, DoRA, LoHa or LoKr layers" for every reader."""
    model = load_model(family)
    names = [name for name, _ in model.unet.named_modules()]
    original = {name: path for path, name in lora_files._original_layout_paths(model.unet, names).items()}
    layers = [(f"unet.{original[MID_Q]}", model.unet, MID_Q), (f"clip_l.text_model.{TE_Q}", model.text_encoders[0],
                                                               TE_Q)]
    if family == "tiny-sdxl":
        layers.append((f"clip_g.text_model.{TE_Q}", model.text_encoders[1], f"text_model.{TE_Q}"))
    tensors, expected = {}, {}
    for base, part, name in layers:
        weight = part.get_submodule(name).weight
        down, up = random(4, weight.shape[1]), random(weight.shape[0], 4)
        tensors |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up, f"{base}.alpha": torch.tensor(2.0)}
        expected[part, name] = weight.detach() + 2.0 / 4 * up @ down
    path = tmp_path / "lora.safetensors"
    # with the embedding OneTrainer bundles beside (by default): left out, not "no LoRA layers"
    save_file(tensors | {"bundle_emb.ohwx.clip_l": random(1, 32)}, str(path))
    assert network_options(path) | {"rank": 4, "alpha": 2.0, "network": "lora", "train_text_encoder": True} == \
        network_options(path)
    # lowvram's exact reader, which applies a DoRA's or LoHa's too, not diffusers' (a text encoders' file as well)
    text_only = tmp_path / "text_only.safetensors"
    save_file({key: value for key, value in tensors.items() if key.startswith("clip_")}, str(text_only))
    assert _read_with_peft(path) and _read_with_peft(text_only)
    apply_loras(model, [(path, 1.0)])
    for (part, name), weight in expected.items():
        torch.testing.assert_close(weight_of(part.get_submodule(name)), weight, atol=1e-5, rtol=1e-5, msg=name)
    config = run_config(model=family, rank=4, alpha=2.0, train_text_encoder=True)
    again = load_model(family)
    networks.add_lora(again, config.network, config.alpha, True)
    assert lora_files.start_from(again, path, config.network) == len(layers)
    own = {model.unet: again.unet, **dict(zip(model.text_encoders, again.text_encoders, strict=True))}
    for (part, name), weight in expected.items():
        torch.testing.assert_close(weight_of(own[part].get_submodule(name)), weight, atol=1e-5, rtol=1e-5, msg=name)
    assert main(["info", str(path)]) == 0 and "no LoRA" not in capsys.readouterr().out
