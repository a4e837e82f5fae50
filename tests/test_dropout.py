"""kohya's dropouts on a LoRA (--dropout on the rank activations, --rank-dropout, --module-dropout): what each
leaves out, only in training, the same draws when gradient checkpointing recomputes a block, and kohya's and
OneTrainer's settings carried over."""

import json

import pytest
import torch
from conftest import run_config
from safetensors import safe_open

from lowvram.adapters.networks import ADAPTER, adapted_layers, add_lora
from lowvram.checkpointing import enable_checkpointing
from lowvram.config import NetworkConfig
from lowvram.errors import LowvramError
from lowvram.models.loading import load_model
from lowvram.train.loop import train


def adapted(**rates):
    model = load_model("tiny", None, dtype=torch.float32)
    model.unet.requires_grad_(False)
    add_lora(model, NetworkConfig(rank=8, lora_layers="full", **rates), 8.0, False)
    return model


def test_each_dropout_leaves_out_what_kohyas_does_and_only_in_training():
    model = adapted(dropout=0.5, rank_dropout=0.5, module_dropout=0.5)
    layers = dict(adapted_layers(model.unet))
    model.unet.train()
    for path, x in (("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", (3, 10, None)),
                    ("down_blocks.0.resnets.0.conv1", (3, None, 8, 8))):
        down, up = layers[path].lora_A[ADAPTER], layers[path].lora_B[ADAPTER]
        conv = isinstance(down, torch.nn.Conv2d)
        x = torch.randn(*[down.weight.shape[1] if n is None else n for n in x])
        plain = down._conv_forward(x, down.weight, None) if conv else torch.nn.functional.linear(x, down.weight)
        dropped = down(x)
        # each value kept is scaled by 1 / (1 - 0.5) twice (activations, then ranks); the rest are left out
        assert torch.all((dropped == 0) | torch.isclose(dropped, 4 * plain, rtol=1e-5, atol=1e-6))
        left_out = (dropped == 0).flatten(2).all(-1) if conv else (dropped == 0).all(1)  # per sample and rank
        assert left_out.any() and not left_out.all()
        torch.nn.init.normal_(up.weight)
        h = torch.ones(1, 8, 2, 2) if conv else torch.ones(1, 8)
        full = up._conv_forward(h, up.weight, None) if conv else torch.nn.functional.linear(h, up.weight)
        outputs = [up(h) for _ in range(200)]
        left_out = [bool((o == 0).all()) for o in outputs]
        assert 0.3 < sum(left_out) / len(outputs) < 0.7  # the whole update left out half the time, else all of it
        assert all(gone or torch.equal(o, full) for gone, o in zip(left_out, outputs))
    model.unet.eval()  # nothing is left out in eval mode (validation, samples)
    layer = layers["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    down, up = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
    x = torch.randn(3, 10, down.weight.shape[1])
    assert torch.equal(down(x), torch.nn.functional.linear(x, down.weight))
    h = torch.ones(1, 8)
    assert all(torch.equal(up(h), torch.nn.functional.linear(h, up.weight)) for _ in range(20))


def gradients(model, checkpointing: bool) -> dict[str, torch.Tensor]:
    unet = model.unet
    if checkpointing:
        enable_checkpointing(unet)
    unet.train()
    unet.zero_grad(set_to_none=True)
    for name, p in unet.named_parameters():
        if p.requires_grad and "lora_B" in name:  # up matrices start at zero; nonzero ones make every path count
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    torch.manual_seed(7)
    unet(latents, torch.tensor([10, 500]), encoder_hidden_states=hidden).sample.square().mean().backward()
    return {name: p.grad.clone() for name, p in unet.named_parameters() if p.requires_grad}


def test_a_recomputed_block_drops_what_its_forward_dropped():
    """Gradient checkpointing recomputes each block in backward; its dropouts draw the same as in forward, so the
    gradients are those of no checkpointing, bit for bit (and they differ from those without dropout)."""
    rates = {"dropout": 0.3, "rank_dropout": 0.3, "module_dropout": 0.2}
    model = adapted(**rates)
    plain = gradients(model, checkpointing=False)
    recomputed = gradients(model, checkpointing=True)
    assert plain.keys() == recomputed.keys() and len(plain) > 20
    assert all(torch.equal(plain[k], recomputed[k]) for k in plain)
    without = gradients(adapted(), checkpointing=False)
    assert sum(not torch.equal(plain[k], without[k]) for k in plain) > len(plain) / 2


def test_dropouts_train_end_to_end_and_are_recorded_as_kohya_records_them(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=2, dropout=0.1, rank_dropout=0.2, module_dropout=0.1,
                              gradient_checkpointing=True, train_text_encoder=True))
    meta = safe_open(str(result.lora_path), framework="pt").metadata()
    assert meta["ss_network_dropout"] == "0.1"
    assert json.loads(meta["ss_network_args"]) == {"rank_dropout": "0.2", "module_dropout": "0.1"}


@pytest.mark.parametrize("network", ["loha", "lokr"])
def test_lycoris_networks_take_rank_dropout_in_training_only(tmp_path, network):
    """LyCORIS's LoHa and LoKr have rank dropout (rows of the update left out, the rest scaled up): it was refused,
    and a kohya config's rank_dropout for them was not carried over."""
    from lowvram.adapters.networks import adapted_layers

    result = train(run_config(output=str(tmp_path), max_steps=1, network=network, rank_dropout=0.5))
    assert json.loads(safe_open(str(result.lora_path), framework="pt").metadata()["ss_network_args"])[
        "rank_dropout"] == "0.5"
    _, layer = next(iter(adapted_layers(result.model.unet)))
    assert layer.rank_dropout["default"] == 0.5
    layer.train()
    torch.manual_seed(0)
    dropped = [layer.get_delta_weight("default", apply_rank_dropout=True) for _ in range(2)]
    assert not torch.equal(dropped[0], dropped[1])  # rows drawn anew each time
    layer.eval()
    assert torch.equal(layer.get_delta_weight("default"), layer.get_delta_weight("default"))


def test_dropouts_a_network_lacks_are_refused_one_line_each():
    for rates, says in (({"network": "lokr", "dropout": 0.1},
                         "--dropout: LyCORIS's lokr has no dropout of its own (it ignores kohya's network_dropout)"),
                        # peft computes DoRA's weight norm through the hooked projections: the dropouts corrupted it
                        ({"network": "dora", "dropout": 0.1, "module_dropout": 0.1},
                         "--dropout, --module-dropout: not with --network dora"),
                        ({"module_dropout": 1.0}, "--module-dropout: must be in [0, 1), got 1.0")):
        with pytest.raises(LowvramError) as error:
            run_config(**rates)
        assert str(error.value) == says or str(error.value).startswith(says)
        assert len(str(error.value).splitlines()) == 1
