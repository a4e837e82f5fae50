"""The storage backends' CUDA kernel contracts (lowvram.quant.KERNEL_CONTRACTS), checked on the CPU.

On an H200, full-size SD1.5 and SDXL U-Nets crashed in kernels the tiny models never reach: quanto's int4
TinyGemm kernel (only for layers of at least 128 input features, in groups of 128) took fp32 inputs, its fp8
Marlin kernel likewise, and bitsandbytes' int8 matmul met statistics left on the CPU. The CPU paths of those
backends accept all of that, so these tests check the contracts themselves, on real converted layers of the
full-size architectures (every width, head count and cross-attention size; one layer per block and one
transformer per stack, to keep a CPU run short), in the training step the loop runs (bf16 autocast, fp32
adapters on every layer kohya's LoCon adapts).
"""

import copy

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from lowvram.adapters.networks import add_adapter
from lowvram.formats import WEIGHT_FORMATS
from lowvram.models import FAMILIES
from lowvram.models.conditioning import unet_conditioning
from lowvram.quant import contract_violations, convert_frozen, converted_layers, place, watch_contracts
from lowvram.train.loss import diffusion_loss

COMPUTE = torch.bfloat16
STORED = [name for name, spec in WEIGHT_FORMATS.items() if name not in ("fp32", "fp16", "bf16")]
SLOW = ("quanto-int4",)  # its CPU packing of a few hundred million weights takes a minute
CASES = [pytest.param(family, fmt, marks=[pytest.mark.slow] if fmt in SLOW else [])
         for family in ("sd15", "sdxl") for fmt in STORED]


def full_width_unet(family_name: str) -> UNet2DConditionModel:
    """The family's U-Net at full width, one ResNet and one transformer block per stage, random bf16 weights."""
    family = FAMILIES[family_name]
    config = UNet2DConditionModel.load_config(family.config_dir, subfolder="unet")
    config["layers_per_block"] = 1
    if "transformer_layers_per_block" in config:
        config["transformer_layers_per_block"] = 1
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to(dtype=COMPUTE).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*unet.parameters(), *unet.buffers()]:
            tensor.normal_(0.0, 0.02, generator=generator)
    return unet


def cuda_autocast_norms(unet):
    """CUDA's autocast runs group and layer norms in fp32 and hands their fp32 output to the next layer; the CPU's
    keeps them in bf16 (and refuses an fp32 input with bf16 parameters, which CUDA's casts). Hooks make the CPU
    step's norms take what CUDA's take and give what CUDA's give."""
    norms = [m for m in unet.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))]
    return ([m.register_forward_pre_hook(lambda module, args: (args[0].to(COMPUTE),)) for m in norms]
            + [m.register_forward_hook(lambda module, args, out: out.float()) for m in norms])


def training_step(unet, family_name: str) -> None:
    """One forward and backward as the loop runs it on a GPU (bf16 autocast, fp32 norms), on an 8x8 latent."""
    family = FAMILIES[family_name]
    hooks = cuda_autocast_norms(unet)
    scheduler = DDPMScheduler.from_pretrained(family.config_dir, subfolder="scheduler")
    latents = torch.randn(1, 4, 8, 8, dtype=COMPUTE)
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, dtype=COMPUTE)
    pooled = torch.randn(1, 1280, dtype=COMPUTE) if family.size_conditioning else None
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]])
    with torch.autocast("cpu", dtype=COMPUTE):
        loss = diffusion_loss(unet, scheduler, latents, unet_conditioning(family, hidden, pooled, time_ids),
                              torch.randn_like(latents), torch.tensor([500]))
    loss.backward()
    for hook in hooks:
        hook.remove()


@pytest.fixture(scope="module")
def built() -> dict:
    """Each family's U-Net, built once (its random weights take seconds); each test converts a copy."""
    return {}


@pytest.mark.parametrize(("family_name", "fmt"), CASES)
def test_every_converted_layer_keeps_its_kernel_contract_in_a_training_step(family_name, fmt, built):
    if family_name not in built:
        built.clear()  # (the cases come family by family: one U-Net held at a time)
        built[family_name] = full_width_unet(family_name)
    unet = place(convert_frozen(copy.deepcopy(built[family_name]), fmt, COMPUTE), "cpu")
    layers = list(converted_layers(unet))
    assert layers, f"{fmt} converted no layer"
    for kept in (unet.conv_in, unet.conv_out):  # tiny and sensitive: in full precision, as every tool keeps them
        assert type(kept) is torch.nn.Conv2d and kept.weight.dtype == COMPUTE, (fmt, kept)
    params = add_adapter(unet, FAMILIES[family_name].lora_targets("unet", "full"), 4, 4, 0.0)
    with watch_contracts(unet, COMPUTE) as violations:
        training_step(unet, family_name)
    assert not violations, f"{len(violations)} calls break the contract, e.g. {violations[:3]}"
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("fmt", ["quanto-int8", "quanto-fp8", "bnb-nf4", "bnb-int8", "fp8"])
def test_a_converted_layer_hands_its_kernel_the_compute_dtype_whatever_it_is_given(fmt):
    """Under CUDA autocast the norms before a projection give fp32, and an fp32 adapter's sum is fp32 too: every
    layer must take that. SDXL's widest projection (1280 -> 10240, GEGLU) and a 1280-channel 3x3 convolution."""
    block = torch.nn.Sequential(torch.nn.Linear(1280, 10240), torch.nn.Conv2d(1280, 1280, 3, padding=1))
    block = place(convert_frozen(block.to(COMPUTE), fmt, COMPUTE), "cpu")
    with watch_contracts(block, COMPUTE) as violations:
        block[0](torch.randn(2, 16, 1280))
        if type(block[1]) is not torch.nn.Conv2d:  # bitsandbytes keeps convolutions in the compute dtype
            block[1](torch.randn(2, 1280, 4, 4))
    assert not violations, violations


def test_contract_check_reports_a_quanto_layer_given_fp32():
    """The check itself can fail: a quanto layer called past its input cast is reported."""
    layer = convert_frozen(torch.nn.Sequential(torch.nn.Linear(256, 256)).to(COMPUTE), "quanto-int4", COMPUTE)[0]
    problems = contract_violations(layer, torch.randn(4, 256), COMPUTE)
    assert problems == [f"input {torch.float32}, kernel needs {COMPUTE}"]


def test_place_moves_bitsandbytes_int8_statistics_with_the_weight():
    """Module.to swaps parameter data in place and leaves bitsandbytes' CB/SCB where they were; `place` moves
    them too (here from the weight's old storage to a copy, the CPU standing in for the device move)."""
    block = convert_frozen(torch.nn.Sequential(torch.nn.Linear(256, 256)).to(COMPUTE), "bnb-int8", COMPUTE)
    layer = block[0]
    layer.weight.data = layer.weight.data.clone()  # what Module.to does to the data on a real move
    assert layer.weight.CB.data_ptr() != layer.weight.data.data_ptr()
    place(block, "cpu")
    assert layer.weight.CB.data_ptr() == layer.weight.data.data_ptr()
    block(torch.randn(2, 256, dtype=COMPUTE))
    assert layer.state.CB.data_ptr() == layer.weight.data.data_ptr()


@pytest.mark.gpu
@pytest.mark.parametrize(("family_name", "fmt"), CASES)
def test_every_converted_layer_trains_on_cuda_at_full_width(family_name, fmt):
    """The same U-Nets on the GPU, the way a run gets there: converted on the host, then placed; a training
    step under CUDA's own autocast, every call checked against its contract, and finite adapter gradients."""
    unet = place(convert_frozen(full_width_unet(family_name), fmt, COMPUTE), "cuda")
    params = add_adapter(unet, FAMILIES[family_name].lora_targets("unet", "full"), 4, 4, 0.0)
    family = FAMILIES[family_name]
    scheduler = DDPMScheduler.from_pretrained(family.config_dir, subfolder="scheduler")
    latents = torch.randn(1, 4, 16, 16, dtype=COMPUTE, device="cuda")
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, dtype=COMPUTE, device="cuda")
    pooled = torch.randn(1, 1280, dtype=COMPUTE, device="cuda") if family.size_conditioning else None
    time_ids = torch.tensor([[128, 128, 0, 0, 128, 128]], device="cuda")
    with watch_contracts(unet, COMPUTE) as violations, torch.autocast("cuda", dtype=COMPUTE):
        loss = diffusion_loss(unet, scheduler, latents, unet_conditioning(family, hidden, pooled, time_ids),
                              torch.randn_like(latents), torch.tensor([500], device="cuda"))
    loss.backward()
    assert not violations, violations[:3]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
