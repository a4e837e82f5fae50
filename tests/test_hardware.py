"""GPU profiles and budgets: every shipped profile loads and is plausible; sizes parse; bad input is named."""

import pytest

from lowvram.errors import LowvramError
from lowvram.hardware import (
    GIB,
    hardware_for,
    list_profiles,
    load_profile,
    parse_size,
    precision_trouble,
    resolve_mixed_precision,
)

EXPECTED = {"gtx-1650-4gb", "gtx-1660-6gb", "rtx-3050-laptop-4gb", "rtx-3060-laptop-6gb", "rtx-2060-6gb",
            "rtx-3070-8gb", "rtx-4060-8gb", "rtx-4060-laptop-8gb", "rtx-3060-12gb", "colab-t4", "rtx-4090-24gb",
            "a100-40gb", "h100-80gb", "rtx-4060-ti-16gb", "rtx-4080-16gb", "rtx-a4000-16gb", "rtx-3090-24gb",
            "rtx-a5000-24gb", "l4-24gb", "rtx-a6000-48gb", "l40s-48gb"}  # (the last eight: what GPU rentals offer)


def test_the_cards_people_train_on_have_profiles():
    assert EXPECTED <= set(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_loads_and_is_plausible(name):
    hw = load_profile(name)
    assert hw.device == "cuda" and hw.source == f"profile {name}"
    assert 2 * GIB <= hw.total_vram <= 200 * GIB
    assert 0 < hw.free_vram <= hw.total_vram
    assert 4 * GIB <= hw.host_ram <= 2048 * GIB
    major = int(hw.compute_capability.split(".")[0])
    assert hw.bf16 == (major >= 8)  # bf16 arrived with Ampere (8.x)
    assert 0 <= hw.cuda_context < GIB and hw.pcie_gbps > 0  # 0: the measured default (calibration.json)


def test_a_gtx_16xx_trains_in_fp32_and_is_told_why_fp16_fails():
    """fp16 gives NaN losses on GTX 16xx cards (kohya-ss/sd-scripts#293): auto picks fp32 there; an RTX 20xx of
    the same compute capability keeps fp16, and each card's NaN advice names what it can run."""
    gtx, rtx, t4 = load_profile("gtx-1660-6gb"), load_profile("rtx-2060-6gb"), load_profile("colab-t4")
    assert [resolve_mixed_precision("auto", hw) for hw in (gtx, rtx, t4)] == ["no", "fp16", "fp16"]
    assert resolve_mixed_precision("fp16", gtx) == "fp16"  # the user's own choice stands, with the warning
    assert "GTX 16xx cards give NaN losses" in precision_trouble("fp16", gtx)
    assert precision_trouble("fp16", rtx) == "fp16 overflow (try --mixed-precision no: fp32)"
    assert precision_trouble("fp16", load_profile("rtx-3060-12gb")) == "fp16 overflow (try --mixed-precision bf16)"
    assert precision_trouble("no", gtx) is None


def test_colab_t4_is_fp16_with_little_host_ram():
    hw = load_profile("colab-t4")
    assert not hw.bf16 and 12 * GIB < hw.host_ram < 13 * GIB and hw.total_vram >= 15 * GIB


@pytest.mark.parametrize("text, expected", [("6GB", 6 * GIB), ("6", 6 * GIB), ("5.5 GiB", int(5.5 * GIB)),
                                            ("512MB", 512 * 1024**2), ("2g", 2 * GIB)])
def test_sizes_parse(text, expected):
    assert parse_size(text, "--vram") == expected


def test_bad_size_and_unknown_profile_are_named():
    with pytest.raises(LowvramError, match="--vram: 'six' is not a size"):
        parse_size("six", "--vram")
    with pytest.raises(LowvramError, match="--vram: '512' alone would be read in GB; write 512MB for megabytes, or "):
        parse_size("512", "--vram")  # it was taken as 512 GB, unsaid
    assert parse_size("512GB", "--vram") == 512 * GIB and parse_size("512", "--ram") == 512 * GIB
    with pytest.raises(LowvramError, match=r"--profile: no profile 'rtx-9090' \(did you mean rtx-\d090-24gb\?\); "
                                           "profiles are .*colab-t4"):
        load_profile("rtx-9090")
    with pytest.raises(LowvramError, match="can't use both"):
        hardware_for("colab-t4", "6GB", None)


def test_vram_and_ram_budgets_make_a_hardware():
    hw = hardware_for(None, "6GB", "12GB")
    assert hw.total_vram == hw.free_vram == 6 * GIB and hw.host_ram == 12 * GIB and hw.source == "--vram"


def test_profile_with_an_unknown_key_is_refused(tmp_path, monkeypatch):
    from lowvram import hardware

    (tmp_path / "odd.toml").write_text('name = "x"\nvram_gb = 4\nbf16 = true\nhost_ram_gb = 8\n'
                                       'compute_capability = "8.6"\nvram = 4\n')
    monkeypatch.setattr(hardware, "PROFILES", tmp_path)
    with pytest.raises(LowvramError, match=r"unknown keys \['vram'\]"):
        load_profile("odd")


def test_spill_watch_warns_once_when_steps_slow_down_for_good():
    from rich.console import Console

    from lowvram.train.progress import SpillWatch

    watch = SpillWatch(Console(quiet=True))
    warnings = [watch.step(t) for t in [0.5] * 6 + [0.6, 2.0, 2.1, 2.2, 2.0, 2.3]]
    assert [w is not None for w in warnings].count(True) == 1
    assert "spilling VRAM into system RAM" in next(w for w in warnings if w)
    steady = SpillWatch(Console(quiet=True))
    assert not any(steady.step(t) for t in [0.5, 0.6, 0.5, 0.55, 0.5, 2.0, 0.5, 0.52, 0.5])  # one slow step is fine


def test_a_t4_trains_in_fp16_though_torch_says_it_can_emulate_bf16(monkeypatch):
    """torch.cuda.is_bf16_supported() is True on a T4 (it counts emulation); detection must not pick bf16 there."""
    import types

    import torch

    from lowvram.hardware import detect, resolve_mixed_precision

    t4 = types.SimpleNamespace(name="Tesla T4", major=7, minor=5)
    for name, value in (("is_available", lambda: True), ("device_count", lambda: 1),
                        ("get_device_properties", lambda index: t4), ("is_bf16_supported", lambda *a, **k: True),
                        ("mem_get_info", lambda index: (14 * GIB, 15 * GIB))):
        monkeypatch.setattr(torch.cuda, name, value)
    hardware = detect()
    assert (hardware.name, hardware.compute_capability, hardware.bf16) == ("Tesla T4", "7.5", False)
    assert resolve_mixed_precision("auto", hardware) == "fp16"
    with pytest.raises(LowvramError, match="--mixed-precision bf16: Tesla T4 has no bf16 support; use fp16"):
        resolve_mixed_precision("bf16", hardware)


def test_plan_for_a_windows_laptop_card_says_how_to_keep_the_driver_from_spilling(capsys):
    """A spill into system RAM is a silent 10x slow-down where other cards run out of memory: the plan for such a
    card (a laptop profile) says how to turn it off; a desktop card's says nothing of it."""
    from lowvram.cli import main

    for profile, said in (("rtx-4060-laptop-8gb", True), ("rtx-4060-8gb", False)):
        main(["plan", "--model", "sdxl", "--profile", profile, "--resolution", "1024"])
        out = " ".join(capsys.readouterr().out.split())
        assert ("set 'CUDA - Sysmem Fallback Policy' to 'Prefer No Sysmem Fallback' in the NVIDIA Control Panel"
                in out) is said, out[-600:]
