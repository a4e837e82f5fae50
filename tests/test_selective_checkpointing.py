"""Selective gradient checkpointing (#14): the planner recomputes only as many U-Net blocks as the budget needs,
the gradients and the LoRA are exactly those of no checkpointing, and the memory the chosen set really takes
(traced) is what the planner estimated."""

import sys
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import run_config
from safetensors import safe_open
from safetensors.torch import load_file

from lowvram.checkpointing import checkpoint_units, checkpointed_count, enable_checkpointing
from lowvram.errors import LowvramError
from lowvram.hardware import GIB, Hardware, hardware_for
from lowvram.models.families import FAMILIES
from lowvram.plan import Workload, estimate, plan
from lowvram.plan.estimate import MemoryStrategy, checkpoint_unit_names, family_data
from lowvram.train.loss import diffusion_loss
from lowvram.train.step import leaner_after_oom

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import plan_trace


def card(gib: float) -> Hardware:
    return hardware_for(None, f"{gib}GB", "64GB")


def lora_gradients(checkpointing) -> dict[str, torch.Tensor]:
    """One real LoRA training step of the tiny U-Net (seeded random weights, fp32, CPU); the adapters' gradients."""
    from diffusers import DDPMScheduler

    family = FAMILIES["tiny"]
    unet, params = plan_trace._trace_unet(family, torch.float32, "auto", 4, checkpointing)
    plan_trace.materialize(unet, fake=False, seed=3)
    unet.train()
    for p in params:  # LoRA's up matrices start at zero; nonzero ones make every gradient path count
        torch.nn.init.normal_(p, std=0.05)
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(plan_trace._latent_shape(family, 2, 64), generator=generator)
    conditioning = plan_trace._conditioning(family, unet, 2, 64, torch.float32)
    conditioning = {k: torch.randn(v.shape, generator=generator) if k == "encoder_hidden_states" else v
                    for k, v in conditioning.items()}
    noise = torch.randn(latents.shape, generator=generator)
    scheduler = DDPMScheduler.from_pretrained(family.config_dir, subfolder="scheduler")
    diffusion_loss(unet, scheduler, latents, conditioning, noise, torch.tensor([100, 700])).backward()
    assert checkpointed_count(unet)[0] == (0 if not checkpointing else len(checkpointing)
                                           if isinstance(checkpointing, list) else checkpointed_count(unet)[1])
    return {name: p.grad.clone() for name, p in unet.named_parameters() if p.requires_grad}


def test_selective_checkpointing_gives_the_gradients_of_none_and_of_all_bit_for_bit():
    names = checkpoint_unit_names(FAMILIES["tiny"], 4)
    none, everything, some = lora_gradients(False), lora_gradients(True), lora_gradients(names)
    assert none.keys() == some.keys() and len(none) > 20
    assert all(torch.equal(none[k], some[k]) for k in none)
    assert all(torch.equal(everything[k], some[k]) for k in none)
    assert any(g.abs().sum() > 0 for g in some.values())


def test_the_chosen_units_really_hold_less_memory():
    family = "tiny"
    names = checkpoint_unit_names(FAMILIES[family], 4)
    traced = {c if isinstance(c, bool) else "some": plan_trace.trace_training_step(
        family, 64, checkpointing=c, fake=False)["activation_bytes"] for c in (False, names, True)}
    assert traced[True] < traced["some"] < traced[False]


def test_the_units_are_diffusers_switches_and_unknown_names_are_refused():
    unet, _ = plan_trace._trace_unet(FAMILIES["sd15"], torch.bfloat16, "auto", None, False)
    units = checkpoint_units(unet)
    assert [u["name"] for u in family_data(FAMILIES["sd15"])["checkpoint_units"]] != list(units)  # ranked, not in order
    assert sorted(u["name"] for u in family_data(FAMILIES["sd15"])["checkpoint_units"]) == sorted(units)
    assert enable_checkpointing(unet, ["up_blocks.3", "down_blocks.0.attentions.0"]) == 2
    assert checkpointed_count(unet) == (2, 25)
    assert unet.up_blocks[3].gradient_checkpointing and not unet.up_blocks[2].gradient_checkpointing
    with pytest.raises(ValueError, match="no checkpointing unit 'up_blocks.9'"):
        enable_checkpointing(unet, ["up_blocks.9"])
    with pytest.raises(LowvramError, match="--checkpoint-blocks 26: Stable Diffusion 1.5's U-Net has 25 blocks"):
        checkpoint_unit_names(FAMILIES["sd15"], 26)


def test_an_out_of_memory_step_with_some_blocks_checkpointed_turns_on_all_of_them():
    unet, _ = plan_trace._trace_unet(FAMILIES["tiny"], torch.float32, "auto", None, ["up_blocks.1"])
    assert leaner_after_oom(unet, 1, 4) == ("turned on gradient checkpointing (all blocks, was 1)", 1)
    assert checkpointed_count(unet) == (9, 9)
    assert leaner_after_oom(unet, 1, 4)[1] == 2  # then it splits the batch


@pytest.mark.parametrize("family, resolution, gib", [("sd15", 512, 3.0), ("sdxl", 1024, 8.0)])
def test_the_planners_checkpoint_set_fits_its_own_estimate(family, resolution, gib):
    """The chosen set, traced as training runs it (fake tensors, full size), holds no more activation memory
    than the planner estimated for it (5 % over at most: the interpolation's measured error), nor much less."""
    work = Workload(FAMILIES[family], resolution, sampling=False)
    # (as once a GPU result shows partial sets: naming the format no longer lets unverified ones in)
    chosen = plan(work, card(gib), {"unet_weights": "bf16", "optimizer": "adamw8bit"}, seen_only=False).choice
    assert chosen is not None and chosen.strategy.selective, chosen and chosen.strategy.label
    names = checkpoint_unit_names(FAMILIES[family], chosen.strategy.checkpoint_units)
    traced = plan_trace.trace_training_step(family, resolution, checkpointing=names)["activation_bytes"]
    estimated = chosen.vram["training"]["activations"]
    assert 0.9 * estimated <= traced <= 1.05 * estimated, (traced / 2**20, estimated / 2**20)


def test_the_planner_checkpoints_fewer_blocks_as_the_budget_grows():
    work = Workload(FAMILIES["sdxl"], 1024, sampling=False)
    fixed = {"unet_weights": "bf16", "optimizer": "adamw8bit"}
    counts = []
    for gib in (7.25, 7.5, 8.0, 9.0, 10.0, 12.0, 16.0, 24.0):
        chosen = plan(work, card(gib), fixed, seen_only=False).choice  # (as once partial sets are seen)
        assert chosen is not None and chosen.peak_vram() <= card(gib).free_vram - 0.25 * GIB
        units = (0 if not chosen.strategy.gradient_checkpointing
                 else chosen.strategy.checkpoint_units or len(family_data(work.family)["checkpoint_units"]))
        counts.append(units)
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-2] and counts[-1] == 0
    assert any(0 < c < 18 for c in counts)
    speeds = [estimate(work, MemoryStrategy("bf16", True, "adamw8bit", k), card(80)).speed for k in (1, 9, 17)]
    assert speeds == sorted(speeds) and speeds[-1] < estimate(work, MemoryStrategy("bf16", True, "adamw8bit"),
                                                              card(80)).speed


def test_the_user_can_still_force_all_or_none_or_a_count():
    work, hardware = Workload(FAMILIES["sdxl"], 1024, sampling=False), card(8.0)
    base = {"unet_weights": "bf16", "optimizer": "adamw8bit"}
    assert plan(work, hardware, base, seen_only=False).choice.strategy.selective  # (as once partial sets are seen)
    assert plan(work, hardware, {**base, "gradient_checkpointing": True}).choice.strategy == MemoryStrategy(
        "bf16", True, "adamw8bit")
    assert plan(work, hardware, {**base, "gradient_checkpointing": False}).choice is None
    assert plan(work, hardware, {**base, "checkpoint_blocks": 15}).choice.strategy == MemoryStrategy(
        "bf16", True, "adamw8bit", 15)


def test_a_lora_trained_with_some_blocks_checkpointed_is_the_one_trained_without(tmp_path):
    """Same seed and options: the tensors are bit-identical with none, some and all blocks recomputed (only
    the metadata records the difference), and the file loads into diffusers."""
    from lowvram.models.loading import load_model
    from lowvram.train.loop import train

    common = {"max_steps": 2, "rank": 4, "lr": 1e-2, "save_precision": "fp32", "seed": 7,
              "cache_dir": str(tmp_path / "cache")}
    files = {}
    for name, memory in {"none": {}, "some": {"checkpoint_blocks": 3},
                         "all": {"gradient_checkpointing": True}}.items():
        files[name] = train(run_config(output=str(tmp_path / name), **common, **memory)).lora_path
    tensors = {name: load_file(path) for name, path in files.items()}
    assert tensors["none"].keys() == tensors["some"].keys() == tensors["all"].keys()
    for key, value in tensors["none"].items():
        assert torch.equal(value, tensors["some"][key]) and torch.equal(value, tensors["all"][key]), key
    recorded = tomllib.loads(safe_open(files["some"], "pt").metadata()["lowvram.config"])
    assert recorded["memory"]["checkpoint_blocks"] == 3  # the file's config replays the run
    fresh = load_model("tiny")
    fresh.pipeline.load_lora_weights(str(files["some"]), adapter_name="some")
    assert any("lora" in name for name, _ in fresh.unet.named_parameters())


@pytest.mark.parametrize("memory, text_checkpointed", [({"checkpoint_blocks": 2}, True), ({"compile": True}, False)])
def test_trained_text_encoders_are_checkpointed_with_the_u_net_and_only_then(tmp_path, memory, text_checkpointed):
    from lowvram.compiling import compile_problem
    from lowvram.train.loop import train

    if "compile" in memory and compile_problem(torch.device("cpu")):
        pytest.skip("no C++ compiler here")
    result = train(run_config(output=str(tmp_path), max_steps=1, train_text_encoder=True, text_encoder_lr=1e-3,
                              **memory))
    assert [e.is_gradient_checkpointing for e in result.model.text_encoders] == [text_checkpointed]
