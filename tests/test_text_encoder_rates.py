"""SDXL's two text encoders at rates of their own (--text-encoder-2-lr; kohya's pair of text_encoder_lr,
OneTrainer's text_encoder_2): an encoder at rate 0 gets no adapters, the other trains at its own rate, and both
still read every caption."""

import json

import pytest
from conftest import run_config
from safetensors import safe_open

from lowvram.errors import LowvramError
from lowvram.kohya_config import translate
from lowvram.train.loop import train
from lowvram.train.setup import optimizer_groups


def test_a_second_encoder_at_rate_zero_gets_no_adapters_and_still_reads_the_captions(tmp_path, monkeypatch):
    from lowvram.train import step

    seen = []
    real = step.encode_prompts

    def recording(family, encoders, *args, **kwargs):
        seen.append(len(encoders))
        return real(family, encoders, *args, **kwargs)

    monkeypatch.setattr(step, "encode_prompts", recording)
    result = train(run_config(model="tiny-sdxl", output=str(tmp_path), max_steps=2, train_text_encoder=True,
                              text_encoder_lr=5e-3, text_encoder_2_lr=0))
    with safe_open(str(result.lora_path), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert any(key.startswith("lora_te1_") for key in keys) and not any(key.startswith("lora_te2_") for key in keys)
    assert seen and set(seen) == {2}  # both encoders read each batch's captions
    assert meta["ss_text_encoder_lr"] == "[0.005, 0]"


def test_each_encoder_trains_at_its_own_rate(tmp_path):
    config = run_config(model="tiny-sdxl", output=str(tmp_path), max_steps=1, train_text_encoder=True,
                        lr=1e-3, text_encoder_lr=2e-4, text_encoder_2_lr=3e-5)
    result = train(config)
    trainable = {name: [p for p in module.parameters() if p.requires_grad]
                 for name, module in [("unet", result.model.unet), ("text_encoder", result.model.text_encoders[0]),
                                      ("text_encoder_2", result.model.text_encoders[1])]}
    rates = [group["lr"] for group in optimizer_groups(result.model, trainable, config)]
    assert rates == [1e-3, 2e-4, 3e-5]
    with safe_open(str(result.lora_path), "pt") as f:
        assert f.metadata()["ss_text_encoder_lr"] == "[0.0002, 3e-05]"
    # each rate is logged, as kohya logs lr/unet and lr/textencoder (only the U-Net's was)
    [logged] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line]
    assert (logged["lr"], logged["lr_text_encoder"], logged["lr_text_encoder_2"]) == (1e-3, 2e-4, 3e-5)


def test_prodigys_rate_times_its_d_is_logged(tmp_path):
    """Prodigy's --lr stays at 1: what moves the weights is d x lr (kohya's lr/d*lr), shown and logged."""
    train(run_config(output=str(tmp_path), max_steps=2, optimizer="prodigy", lr=1.0))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [row["lr"] for row in rows] == [1.0, 1.0]
    assert all(0 < row["lr_effective"] < 1e-3 for row in rows)  # d starts at 1e-6 and grows from there


@pytest.mark.parametrize(("values", "message"), [
    ({"text_encoder_2_lr": 1e-5}, ("--text-encoder-2-lr: set, but the text encoder is not trained \\(lowvram trains "
                                  "the U-Net alone unless told, kohya both\\)")),
    ({"train_text_encoder": True, "text_encoder_lr": 0}, "--text-encoder-lr: 0 leaves every text encoder untrained"),
])
def test_rates_that_train_nothing_are_refused(values, message):
    with pytest.raises(LowvramError, match=message):
        run_config(model="tiny-sdxl", **values)


def test_sd15_has_one_text_encoder_rate(tmp_path):
    with pytest.raises(LowvramError, match="--text-encoder-2-lr: tiny SD .*has one text encoder"):
        train(run_config(output=str(tmp_path), train_text_encoder=True, text_encoder_2_lr=1e-5))


def test_kohyas_pair_of_text_encoder_rates_is_carried(tmp_path):
    base = {"network_module": "networks.lora", "learning_rate": 1e-4}
    values, _ = translate(base | {"text_encoder_lr": [1e-5, 0]}, tmp_path / "k.toml")
    assert (values["text_encoder_lr"], values["text_encoder_2_lr"]) == (1e-5, 0)
    values, _ = translate(base | {"text_encoder_lr": [0, 0]}, tmp_path / "k.toml")
    assert values["train_text_encoder"] is False
    values, _ = translate(base | {"text_encoder_lr": [2e-5, 2e-5]}, tmp_path / "k.toml")
    assert values["text_encoder_lr"] == 2e-5 and "text_encoder_2_lr" not in values
