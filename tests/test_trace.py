"""The memory tracer behind `lowvram plan`: its byte counter, its exact weight sizes, its fake-tensor trace
against a real CPU training step, and the shipped plan_data.json against fresh traces."""

import gc
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from plan_trace import (
    CudaAutocastPolicy,
    LiveBytes,
    trace_sampling,
    trace_training_step,
    trace_vae_encode,
    unet_weight_bytes,
)

from lowvram.formats import WEIGHT_FORMATS
from lowvram.models import FAMILIES
from lowvram.models.loading import random_unet
from lowvram.quant import convert_frozen, storage_bytes

logging.getLogger("diffusers").setLevel(logging.ERROR)
PLAN_DATA = str(Path(__file__).parents[1] / "lowvram" / "plan" / "plan_data.json")
FORMATS = [f for f in WEIGHT_FORMATS if f != "quanto-int4"] + [pytest.param("quanto-int4", marks=pytest.mark.slow)]
COMPUTE = {"compute16": torch.float16, "compute32": torch.float32}
BYTE_KEYS = ("weights_bytes", "baseline_bytes", "peak_bytes", "activation_bytes")


def test_storage_object_lives_as_long_as_its_memory():
    """LiveBytes relies on this: one Python storage object per storage, finalized when the memory goes."""
    base = torch.zeros(1000)
    storage = base.untyped_storage()
    assert base[10:].untyped_storage() is storage
    counter = LiveBytes()
    counter.track([base])
    view = base[10:]
    del storage, base
    gc.collect()
    assert counter.live == 4000  # the view keeps the storage alive
    del view
    gc.collect()
    assert counter.live == 0 and counter.peak == 4000


def test_live_bytes_counts_allocations_once_and_releases_them():
    counter = LiveBytes()
    with counter:
        a = torch.ones(256)  # 1 KiB
        b = a.view(16, 16).t()  # a view: no new storage
        a.add_(1)  # in place: no new storage
        c = a * 2  # 1 KiB
        assert counter.live == 2048
        del a, b, c
        gc.collect()
        d = torch.ones(128)
    assert counter.live == 512 and counter.peak == 2048
    counter.reset_peak()
    assert counter.peak == 512
    del d


def test_cuda_autocast_policy_runs_norms_in_fp32_and_leaves_matmuls_in_16_bits():
    x = torch.randn(1, 32, 4, 4)
    with CudaAutocastPolicy(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.group_norm(x.bfloat16(), 8).dtype == torch.float32
        assert F.layer_norm(x.bfloat16(), (4,)).dtype == torch.float32
        assert F.linear(x, torch.randn(3, 4)).dtype == torch.bfloat16
    with CudaAutocastPolicy():  # inert without autocast
        assert F.group_norm(x.bfloat16(), 8).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["tiny", "tiny-sdxl"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_unet_weight_bytes_equal_real_conversion(family, fmt):
    for dtype in COMPUTE.values():
        real = storage_bytes(convert_frozen(random_unet(FAMILIES[family], dtype=torch.float32), fmt, dtype))
        assert unet_weight_bytes(family, fmt, dtype) == real, (fmt, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fp8", "bnb-nf4"])
def test_full_size_sd15_weight_bytes_equal_real_conversion(fmt):
    real = storage_bytes(convert_frozen(random_unet(FAMILIES["sd15"], dtype=torch.float16), fmt, torch.float16))
    assert unet_weight_bytes("sd15", fmt, torch.float16) == real


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_fake_trace_matches_a_real_cpu_training_step(dtype):
    """The acceptance test: the same step on real CPU tensors, counted by the same counter, peaks within
    10 % of the fake trace, and gradient checkpointing lowers the activations in both."""
    results = {(fake, ckpt): trace_training_step("tiny", 64, checkpointing=ckpt, fake=fake, dtype=dtype)
               for fake in (True, False) for ckpt in (False, True)}
    for ckpt in (False, True):
        fake, real = results[True, ckpt], results[False, ckpt]
        assert abs(fake["peak_bytes"] - real["peak_bytes"]) <= 0.1 * real["peak_bytes"], (fake, real)
        assert abs(fake["activation_bytes"] - real["activation_bytes"]) <= 0.1 * real["activation_bytes"]
        assert fake["baseline_bytes"] == real["baseline_bytes"]
        assert real["end_bytes"] == real["baseline_bytes"]  # nothing of the step outlives it
    for fake in (True, False):
        plain, ckpt = results[fake, False], results[fake, True]
        assert ckpt["activation_bytes"] < 0.8 * plain["activation_bytes"]
    real = results[False, False]
    size = 2 if dtype else 4
    lora = real["lora_params"] * 4  # fp32 LoRA params, plus AdamW's two moments, plus its step counters
    assert real["weights_bytes"] == sum(p.numel() for p in random_unet(FAMILIES["tiny"]).parameters()) * size
    assert lora * 3 < real["baseline_bytes"] - real["weights_bytes"] < lora * 3 + 4096


def test_batch_scales_activations_about_linearly():
    one = trace_training_step("tiny", 64)["activation_bytes"]
    two = trace_training_step("tiny", 64, batch=2)["activation_bytes"]
    assert 1.8 * one < two < 2.2 * one


def test_vae_and_sampling_traces_grow_with_resolution():
    small, large = trace_vae_encode("tiny", 64), trace_vae_encode("tiny", 128)
    assert 3.5 < large["activation_bytes"] / small["activation_bytes"] < 4.5
    assert trace_vae_encode("tiny", 64, dtype=torch.bfloat16)["activation_bytes"] < small["activation_bytes"]
    sampling = trace_sampling("tiny", 64)
    assert sampling["activation_bytes"] == max(sampling["unet_activation_bytes"],
                                               sampling["vae_decode_activation_bytes"]) > 0


@pytest.fixture(scope="module")
def plan_data():
    with open(PLAN_DATA, encoding="utf-8") as fh:
        return json.load(fh)


def _training(data, family, resolution, checkpointing, batch=1, layers="attn"):
    entries = [e for e in data["families"][family]["training"] if e["resolution"] == resolution
               and e["checkpointing"] == checkpointing and e["batch"] == batch and e["unet_weights"] == e["dtype"]
               and e["layers"] == layers]
    assert len(entries) == 1, (family, resolution, checkpointing)
    return entries[0]


def test_plan_data_covers_every_family_and_the_native_resolutions(plan_data):
    assert plan_data["version"] == 1 and plan_data["torch"] and plan_data["command"]
    assert set(plan_data["families"]) == set(FAMILIES)
    for name, family in plan_data["families"].items():
        for column in COMPUTE:
            assert set(family["unet_weight_bytes"][column]) == set(WEIGHT_FORMATS)
        per_rank = family["lora_params_per_rank"]
        assert family["part_param_counts"]["unet"] > per_rank["full"]["unet"] > per_rank["attn-mlp"]["unet"]
        assert per_rank["attn-mlp"]["unet"] > per_rank["attn"]["unet"] > 0
        assert family["largest_layer_params"] > 0
        assert family["vae_encode"] and family["sampling"]
    for name, resolution in (("sd15", 512), ("sdxl", 1024)):
        plain = _training(plan_data, name, resolution, False)
        ckpt = _training(plan_data, name, resolution, True)
        assert ckpt["activation_bytes"] < plain["activation_bytes"] and ckpt["peak_bytes"] < plain["peak_bytes"]
        assert plain["peak_bytes"] == plain["baseline_bytes"] + plain["activation_bytes"]
        for layers in ("attn-mlp", "full"):  # more adapted layers keep more inputs for their gradients
            wider = _training(plan_data, name, resolution, False, layers=layers)
            assert wider["activation_bytes"] > plain["activation_bytes"]
    assert plan_data["families"]["sdxl"]["part_param_counts"]["unet"] > 2.5e9


@pytest.mark.parametrize("family", ["tiny", "tiny-sdxl"])
def test_plan_data_is_not_stale(plan_data, family):
    """The shipped numbers are what the code measures now; rerun tools/build_plan_data.py when this fails."""
    data = plan_data["families"][family]
    for checkpointing in (False, True) if family == "tiny" else (False,):
        fresh = trace_training_step(family, 64, checkpointing=checkpointing)
        shipped = _training(plan_data, family, 64, checkpointing)
        assert {k: shipped[k] for k in BYTE_KEYS} == {k: fresh[k] for k in BYTE_KEYS}
    fresh = trace_training_step(family, 64, layers="full")
    shipped = _training(plan_data, family, 64, False, layers="full")
    assert {k: shipped[k] for k in BYTE_KEYS} == {k: fresh[k] for k in BYTE_KEYS}
    for column, dtype in COMPUTE.items():
        for fmt in ("fp16", "fp8", "bnb-nf4", "quanto-int8"):
            assert data["unet_weight_bytes"][column][fmt] == unet_weight_bytes(family, fmt, dtype)
