"""Per-block ranks, alphas and learning-rate weights (kohya's block_dims, conv_block_dims, down/mid/up_lr_weight):
kohya's block numbers at full size, every adapted layer at its block's rank, the optimizer's groups at each block's
rate, and the refusals of a wrong list."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import run_config
from diffusers import UNet2DConditionModel
from test_train import model_outputs

from lowvram.adapters import lora_files, networks
from lowvram.adapters.blocks import block_of, block_plan
from lowvram.config import NetworkConfig
from lowvram.errors import LowvramError
from lowvram.hardware import detect
from lowvram.models.families import FAMILIES, LORA_LAYERS
from lowvram.models.ldm_layout import unet_to_ldm
from lowvram.models.loading import load_model
from lowvram.plan import workload_for
from lowvram.resolve import resolve_run
from lowvram.train.identity import recipe
from lowvram.train.loop import train
from lowvram.train.setup import optimizer_groups


def meta_unet(family: str) -> UNet2DConditionModel:
    config = UNet2DConditionModel.load_config(str(FAMILIES[family].config_dir / "unet"))
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def kohya_number(ldm_key: str, family: str) -> int:
    """kohya's block number from a module's key in the original (LDM/SGM) layout, as kohya's lora.py counts
    them: SD1.5 input_blocks.K is K, its whole middle block 12, output_blocks.O is 13 + O; SDXL shifts the input
    blocks by one (its time embedding is 0) and numbers the three middle parts 10-12."""
    part, index = ldm_key.split(".")[:2]
    sdxl = FAMILIES[family].blocks.leading == 1
    return {"input_blocks": int(index) + sdxl, "middle_block": 10 + int(index) if sdxl else 12,
            "output_blocks": 13 + int(index)}[part]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_block_numbers_are_kohyas_in_the_original_layout(family):
    """Every layer --lora-layers full adapts sits in the block kohya numbers it by (read from the original
    checkpoint layout, which kohya's SDXL network names its layers by)."""
    unet = meta_unet(family)
    targets = LORA_LAYERS["full"]["unet"]
    paths = [name for name, _ in unet.named_modules() if networks.targeted(name, targets)]
    ldm = unet_to_ldm({f"{path}.weight": torch.empty(0) for path in paths}, dict(unet.config))
    originals = {key.removeprefix("model.diffusion_model.").removesuffix(".weight"): key for key in ldm}
    assert len(originals) == len(paths)
    by_path = dict(zip([f"{path}.weight" for path in paths], ldm, strict=True))  # unet_to_ldm keeps the order
    numbers = {path: block_of(path, FAMILIES[family].blocks) for path in paths}
    expected = {path: kohya_number(by_path[f"{path}.weight"].removeprefix("model.diffusion_model."), family)
                for path in paths}
    assert numbers == expected
    layout = FAMILIES[family].blocks
    assert set(numbers.values()) == set(range(layout.leading + 1, layout.size - layout.trailing))  # all but IN00


def ranks_for(size: int) -> str:
    return ",".join(str(0 if i % 7 == 3 else 2 + 2 * (i % 4)) for i in range(size))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_layer_takes_its_blocks_rank_and_alpha_at_full_size(family):
    layout = FAMILIES[family].blocks
    network = NetworkConfig(rank=16, alpha=8, lora_layers="full", block_ranks=ranks_for(layout.size),
                            conv_block_ranks=",".join(str(i % 3 * 4) for i in range(layout.size)),
                            conv_block_alphas="2", up_lr_weight="0,1,0.5")
    plan = block_plan(network, layout, family)
    unet = meta_unet(family)
    targets = LORA_LAYERS["full"]["unet"]
    spatial = set(networks.spatial_convolutions(unet, targets))
    networks.add_adapter(unet, targets, 16, 8.0, 0.0, conv=network.conv_rank_alpha, blocks=plan)
    adapted = dict(networks.adapted_layers(unet))
    for path in [name for name, _ in unet.named_modules() if networks.targeted(name, targets)]:
        block = block_of(path, layout)
        rank, alpha = plan.rank_alpha(path, path in spatial)
        if path in spatial:
            assert (rank, alpha) == ((block % 3 * 4, 2.0) if block != layout.leading + layout.down + layout.mid
                                     else (0, 0.0))
        if not rank:
            assert path not in adapted, path
            continue
        assert networks.adapter_rank_alpha(adapted[path]) == (rank, alpha), path
    # kohya's default: every block at the run's alpha, whatever its rank
    assert {networks.adapter_rank_alpha(layer)[1] for path, layer in adapted.items() if path not in spatial} == {8.0}
    out00 = layout.leading + layout.down + layout.mid
    assert not any(block_of(path, layout) == out00 for path in adapted)  # its learning-rate weight is 0


def test_kohyas_weight_curves_and_lists():
    layout = FAMILIES["sd15"].blocks

    def weights(**values):
        return block_plan(NetworkConfig(**values), layout, "SD1.5").lr_weights

    cosine = weights(down_lr_weight="cosine")[:12]
    assert cosine[0] == 1.0 and cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert cosine[4] == pytest.approx(math.sin(math.pi * (7 / 11) / 2))
    assert weights(up_lr_weight="sine+0.5")[13:] == pytest.approx([math.sin(math.pi * i / 11 / 2) + 0.5
                                                                    for i in range(12)])
    assert weights(up_lr_weight="linear")[13:] == pytest.approx([i / 11 for i in range(12)])
    assert weights(down_lr_weight="0.5,0.25")[:13] == (0.5, 0.25) + (1.0,) * 11
    # kohya's block_lr_zero_threshold: a block weighted at or below it gets no adapters
    assert weights(down_lr_weight="0.5,0.25", block_lr_zero_threshold=0.25)[:13] == (0.5, 0.0) + (1.0,) * 11
    # in the groups given weights only: kohya keeps the others at 1 whatever the threshold
    high = weights(up_lr_weight="0.5,1.5", block_lr_zero_threshold=1.0)
    assert high[:13] == (1.0,) * 13 and high[13:16] == (0.0, 1.5, 0.0)
    with pytest.raises(LowvramError, match="^--block-lr-zero-threshold: only used with --down-lr-weight"):
        run_config(block_lr_zero_threshold=0.1)
    assert weights(mid_lr_weight="0")[12] == 0.0 and weights(mid_lr_weight="0.3")[:12] == (1.0,) * 12
    assert len(block_plan(NetworkConfig(up_lr_weight="zeros"), FAMILIES["sdxl"].blocks, "SDXL").lr_weights) == 23
    with pytest.raises(LowvramError, match=r"^--up-lr-weight: 13 values given for 12 blocks; give at most 12$"):
        weights(up_lr_weight=",".join(["1"] * 13))
    with pytest.raises(LowvramError, match=r"^--down-lr-weight: 'sine\+x': the part after \+"):
        weights(down_lr_weight="sine+x")


def test_learning_rate_weights_group_the_unets_parameters():
    config = run_config(lora_layers="attn-mlp", down_lr_weight="0.5", up_lr_weight="1,1,1,0.25",
                        loraplus_ratio=4.0, train_text_encoder=True, text_encoder_lr=1e-5)
    run = resolve_run(config, detect())
    model = load_model("tiny")
    trainable = networks.add_lora(model, config.network, config.alpha, True, run.blocks)
    groups = optimizer_groups(model, trainable, config, run.blocks)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert groups[0]["lr"] == config.lr  # the log's learning rate is the plain one
    seen = set()
    for path, layer in networks.adapted_layers(model.unet):
        weight = run.blocks.lr_weight(path)
        seen.add(weight)
        assert rate[id(layer.lora_A["default"].weight)] == pytest.approx(config.lr * weight), path
        assert rate[id(layer.lora_B["default"].weight)] == pytest.approx(config.lr * weight * 4.0), path
    assert seen == {0.5, 0.25, 1.0}
    encoder = model.text_encoders[0]
    assert all(rate[id(p)] in (1e-5, 4e-5) for p in encoder.parameters() if p.requires_grad)
    assert sum(len(group["params"]) for group in groups) == sum(len(params) for params in trainable.values())


def test_the_planner_counts_the_largest_block_rank_and_the_recipe_holds_the_blocks():
    ranks = ",".join(["8"] * 12 + ["32"] + ["4"] * 12)
    run = resolve_run(run_config(model="tiny", block_ranks=ranks), detect())
    assert workload_for(run).rank == 32 and workload_for(run).per_block
    shown = lowvram_plan("--model", "tiny", "--block-ranks", ranks).stdout
    assert "LoRA ranks up to 32 (per block)" in " ".join(shown.split())
    assert recipe(run)["--block-ranks"] == ranks
    assert "--block-ranks" not in recipe(resolve_run(run_config(), detect()))


def lowvram_plan(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lowvram", "plan", "--vram", "6GB", *argv], capture_output=True,
                          text=True, check=False)


@pytest.mark.parametrize(("argv", "message"), [
    (["--block-ranks", "4,4,4"], ("--block-ranks: 3 values given; Stable Diffusion 1.5 has 25 blocks (IN00, IN01, "
                                  "IN02, ..., OUT11): give one value for each")),
    (["--model", "sdxl", "--conv-block-alphas", "1,2", "--lora-layers", "full"],
     "--conv-block-alphas: 2 values given; Stable Diffusion XL has 23 blocks (EMB, IN00, IN01, ..., FINAL)"),
    (["--block-ranks", "4,x"], "--block-ranks: '4,x' is not comma-separated whole numbers (e.g. 4,4,8)"),
    (["--block-alphas", "-1"], "--block-alphas: '-1' holds a negative value"),
    (["--conv-block-ranks", "4"], "--conv-block-ranks: only --lora-layers full adapts the 3x3 convolutions"),
    (["--mid-lr-weight", "fast"], "--mid-lr-weight: 'fast' is not comma-separated numbers"),
    (["--down-lr-weight", "cosin"], ("--down-lr-weight: 'cosin' is not comma-separated numbers (e.g. 4,4,8), or a "
                                     "curve: cosine, sine, linear, reverse_linear, zeros (did you mean cosine?)")),
])
def test_a_wrong_block_list_is_one_line_naming_the_option(argv, message):
    done = lowvram_plan(*argv)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr


# tiny stands for SD1.5 (25 blocks); its transformer layers are in IN01, M00, OUT03 and OUT04 (entries 1, 12, 16, 17)
TINY_RANKS = "4,2,4,4,4,4,4,4,4,4,4,4,4,4,4,4,6,0,4,4,4,4,4,4,4"
TINY_ALPHAS = "1,3,1,1,1,1,1,1,1,1,1,1,7,1,1,1,0.5,5,1,1,1,1,1,1,1"


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """A LoRA whose blocks differ in rank and alpha, saved in both layouts."""
    values = {"output": str(tmp_path_factory.mktemp("blocks")), "max_steps": 3, "lr": 1e-2, "save_precision": "fp32",
              "format": "diffusers", "lora_layers": "attn-mlp", "block_ranks": TINY_RANKS,
              "block_alphas": TINY_ALPHAS}
    return values, train(run_config(**values))


def test_blocks_of_their_own_alpha_reload_exactly_in_lowvrams_reader_and_diffusers_layout(varied):
    """`lowvram generate` (lowvram's reader, for lowvram's files) and diffusers (with the -diffusers file) give
    the trained model back. diffusers' reader of kohya files misplaces the alphas of attention layers (it reads
    them at the most common alpha), as the README says."""
    _, result = varied
    trained_out = model_outputs(result.model)[1]
    ours = load_model("tiny")
    lora_files.load_kohya(ours, result.lora_path)
    theirs = load_model("tiny")
    theirs.pipeline.load_lora_weights(str(result.lora_path.parent / f"{result.lora_path.stem}-diffusers"))
    for model in (ours, theirs):
        torch.testing.assert_close(model_outputs(model)[1], trained_out, rtol=1e-4, atol=1e-5)
    misread = load_model("tiny")
    misread.pipeline.load_lora_weights(str(result.lora_path))
    off = (model_outputs(misread)[1] - trained_out).abs().max()
    assert off > 1e-3, "diffusers now reads kohya files' per-block alphas: drop the README's caveat"
    alphas = {networks.adapter_rank_alpha(layer)[1] for _, layer in networks.adapted_layers(result.model.unet)}
    assert alphas == {3.0, 7.0, 0.5}  # every block's own, as given (OUT04, at rank 0, has no adapters)


def test_the_diffusers_layout_file_reads_as_its_kohya_twin_in_every_reader(varied, tmp_path):
    """merge, resize, --network-weights and --base-weights refused diffusers' layout (--format diffusers, the
    diffusers scripts', SimpleTuner's): each reads it now as the kohya file of the same run, its per-block alphas
    from diffusers' adapter metadata."""
    from safetensors.torch import load_file

    from lowvram.cli import main
    from lowvram.lora_header import mixed_layers, network_options

    values, result = varied
    diffusers = result.lora_path.parent / f"{result.lora_path.stem}-diffusers" / "pytorch_lora_weights.safetensors"
    kohya = lora_files.read_lora_file(result.lora_path)[1]
    metadata, theirs = lora_files.read_lora_file(diffusers)
    assert theirs.keys() == kohya.keys() and all(torch.equal(theirs[key], kohya[key]) for key in kohya)
    assert "lora_adapter_metadata" not in metadata  # (diffusers would read a resized kohya file by it)
    held = network_options(diffusers)
    assert held == network_options(result.lora_path) and held["lora_layers"] == "attn-mlp"
    assert mixed_layers(diffusers, held) == mixed_layers(result.lora_path, held)
    ours = load_model("tiny")
    lora_files.load_kohya(ours, diffusers)
    torch.testing.assert_close(model_outputs(ours)[1], model_outputs(result.model)[1], rtol=1e-4, atol=1e-5)
    config = run_config(**values)
    model = load_model("tiny")
    networks.add_lora(model, config.network, config.alpha, False, resolve_run(config, detect()).blocks)
    assert lora_files.start_from(model, diffusers, config.network) == len(lora_files.kohya_layers(model))
    for name, path in (("kohya", result.lora_path), ("diffusers", diffusers)):
        assert main(["resize", str(path), "--rank", "2", "--output", str(tmp_path / f"{name}.safetensors")]) == 0
    resized = [load_file(str(tmp_path / f"{name}.safetensors")) for name in ("kohya", "diffusers")]
    assert resized[0].keys() == resized[1].keys()
    assert all(torch.equal(resized[0][key], resized[1][key]) for key in resized[0])


def test_an_sdxl_dora_in_diffusers_layout_reads_exactly_text_encoders_too(tmp_path, capsys):
    """Both text encoders' layers (lora_te1_, lora_te2_) and the DoRA magnitudes, shaped as LyCORIS's."""
    result = train(run_config(model="tiny-sdxl", output=str(tmp_path), max_steps=2, lr=1e-2, network="dora",
                              train_text_encoder=True, format="diffusers", save_precision="fp32"))
    assert "dora rank 4 alpha 4, text encoder(s) too |" in capsys.readouterr().out  # (the run's line said not)
    diffusers = result.lora_path.parent / f"{result.lora_path.stem}-diffusers" / "pytorch_lora_weights.safetensors"
    kohya, theirs = (lora_files.read_lora_file(path)[1] for path in (result.lora_path, diffusers))
    assert theirs.keys() == kohya.keys() and all(torch.equal(theirs[key], kohya[key]) for key in kohya)
    assert any(key.startswith("lora_te2_") for key in theirs)
    ours = load_model("tiny-sdxl")
    assert lora_files.load_kohya(ours, diffusers) == "dora"
    for got, trained in zip(model_outputs(ours), model_outputs(result.model)):
        torch.testing.assert_close(got, trained, rtol=1e-4, atol=1e-5)


def test_a_run_of_blocks_with_their_own_alphas_says_which_copy_diffusers_reads(tmp_path, capsys):
    """The caveat above, said where it applies: a kohya file alone, of alphas that differ between blocks."""
    said = "note: --block-alphas differ between blocks: diffusers' reader of kohya files misplaces"
    untrained_apart = ",".join("2" if rank != "0" else "9" for rank in TINY_RANKS.split(","))  # (no adapters at 0)
    for output, values in (("kohya", {}), ("diffusers", {"format": "diffusers"}), ("same", {"block_alphas": "2"}),
                           ("rank-0 apart", {"block_alphas": untrained_apart})):
        train(run_config(output=str(tmp_path / output), max_steps=1, block_ranks=TINY_RANKS,
                         **{"block_alphas": TINY_ALPHAS} | values))
        assert (said in " ".join(capsys.readouterr().out.split())) == (output == "kohya"), output


def test_a_file_of_per_block_ranks_starts_a_run_with_the_same_blocks_only(varied):
    values, result = varied
    config = run_config(**values)
    model = load_model("tiny")
    networks.add_lora(model, config.network, config.alpha, False, resolve_run(config, detect()).blocks)
    assert lora_files.start_from(model, result.lora_path, config.network) == len(lora_files.kohya_layers(model))
    plain = run_config(**{**values, "block_ranks": None, "block_alphas": None})
    model = load_model("tiny")
    networks.add_lora(model, plain.network, plain.alpha, False)
    with pytest.raises(LowvramError, match=r"was trained with rank \d+ and alpha [\d.]+; pass --rank"):
        lora_files.start_from(model, result.lora_path, plain.network)
    other = run_config(**{**values, "block_alphas": "2"})
    model = load_model("tiny")
    networks.add_lora(model, other.network, other.alpha, False, resolve_run(other, detect()).blocks)
    with pytest.raises(LowvramError, match=r"alpha \S+ at lora_unet_\w+ \(this run's: \d+ and 2\); pass the "
                                           r"--block-ranks and --block-alphas"):
        lora_files.start_from(model, result.lora_path, other.network)


def test_a_kohya_sdxl_file_in_the_original_layout_with_alphas_of_its_own_reads_exactly(tmp_path, monkeypatch):
    """kohya names SDXL's U-Net layers in the original layout (lora_unet_input_blocks_4_1_...), as lowvram now
    writes them too; lowvram's earlier files named them as diffusers does. A file of either naming whose alphas
    differ between layers (here LoCon's convolutions at alpha 1, the rest at 2) is read by lowvram's reader in
    `lowvram generate`, which gives the trained model back; diffusers reads the same layers under either name (a
    check of the names)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lowvram import generate
    from lowvram.models.ldm_names import ldm_path, unet_table

    result = train(run_config(model="tiny-sdxl", output=str(tmp_path / "out"), max_steps=2, lr=1e-2, rank=4, alpha=2,
                              lora_layers="full", conv_alpha=1, save_precision="fp32"))
    trained_out = model_outputs(result.model)[1]
    unet = result.model.unet
    table = unet_table(dict(unet.config), lambda head: any(n.startswith(head) for n, _ in unet.named_modules()))
    renamed = {}
    for base, (_, path, _) in lora_files.kohya_layers(result.model).items():
        if base.startswith("lora_unet_"):
            assert base == "lora_unet_" + ldm_path(path, table).replace(".", "_")  # written in the original layout
            renamed[base] = "lora_unet_" + path.replace(".", "_")  # the names lowvram's earlier files gave
    assert any("_in_layers_2" in name for name in renamed)  # ResNets' own names too
    tensors = load_file(str(result.lora_path))
    diffusers_named = {renamed.get(key.split(".")[0], key.split(".")[0]) + "." + key.split(".", 1)[1]: tensor
                       for key, tensor in tensors.items()}
    other = tmp_path / "earlier-sdxl.safetensors"  # none of lowvram's metadata either
    metadata = safe_open(str(result.lora_path), framework="pt").metadata()
    save_file(diffusers_named, str(other), {k: v for k, v in metadata.items() if not k.startswith("lowvram.")})

    assert generate._read_with_peft(other)  # its alphas differ: lowvram's reader
    ours = load_model("tiny-sdxl")
    lora_files.load_kohya(ours, other)
    torch.testing.assert_close(model_outputs(ours)[1], trained_out, rtol=1e-4, atol=1e-5)
    by_diffusers = []
    for path in (result.lora_path, other):
        model = load_model("tiny-sdxl")
        model.pipeline.load_lora_weights(str(path))
        by_diffusers.append(model_outputs(model)[1])
    torch.testing.assert_close(by_diffusers[0], by_diffusers[1])
    config = run_config(model="tiny-sdxl", rank=4, alpha=2, lora_layers="full", conv_alpha=1)
    again = load_model("tiny-sdxl")  # --network-weights continues it too
    networks.add_lora(again, config.network, config.alpha, False)
    assert lora_files.start_from(again, other, config.network) == len(renamed)
    torch.testing.assert_close(model_outputs(again)[1], trained_out, rtol=1e-4, atol=1e-5)


def test_a_block_alpha_of_0_is_its_blocks_rank_as_kohya_reads_it():
    """kohya_network passed conv_alpha=0 on as conv_block_alphas 0: the convolutions' adapters trained at scale 0."""
    layout = FAMILIES["sd15"].blocks
    plan = block_plan(NetworkConfig(rank=8, lora_layers="full", block_ranks=ranks_for(layout.size), block_alphas="0",
                                    conv_block_ranks=",".join(["4"] * layout.size), conv_block_alphas="0"), layout,
                      "SD1.5")
    assert plan.alphas == tuple(float(rank) for rank in plan.ranks)
    assert set(plan.conv_alphas) == {4.0}


def test_the_diffusers_copy_names_the_text_encoder_as_comfyui_and_older_diffusers_read_it(tmp_path):
    """transformers 5 has no `text_model` level in CLIPTextModel; the file keeps the names every reader knows."""
    from safetensors.torch import load_file
    result = train(run_config(output=str(tmp_path), max_steps=2, lr=1e-2, train_text_encoder=True,
                              format="diffusers", save_precision="fp32"))
    folder = result.lora_path.parent / f"{result.lora_path.stem}-diffusers"
    names = [key for key in load_file(str(folder / "pytorch_lora_weights.safetensors")) if key.startswith("text_")]
    assert names and all(key.startswith("text_encoder.text_model.encoder.layers.") for key in names)
    theirs = load_model("tiny", None, dtype=torch.float32)
    theirs.pipeline.load_lora_weights(str(folder))
    ids = torch.arange(8)[None]
    with torch.no_grad():
        torch.testing.assert_close(theirs.text_encoders[0](ids)[0], result.model.text_encoders[0](ids)[0],
                                   rtol=1e-4, atol=1e-5)
