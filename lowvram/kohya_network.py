"""A kohya config's network (`network_module`, `network_dim`/`network_alpha`, `network_args`: kohya's LoRA
and LoCon, LyCORIS's LoRA, LoHa and LoKr, per-block ranks and rates, LoRA+ ratios) as lowvram's adapter options."""

from __future__ import annotations

import re
from typing import Any

from lowvram.adapters.blocks import BLOCK_OPTIONS, check_value
from lowvram.errors import LowvramError
from lowvram.kohya_values import as_number, pairs
from lowvram.lora_header import WHOLE_LOKR_RANK

LYCORIS_ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}
LYCORIS_PRESETS = {"full": "full", "attn-mlp": "attn-mlp", "attn-only": "attn"}
LYCORIS_UNTRAINED = {"decompose_both": "its first Kronecker factor decomposed too",
                     "use_scalar": "a trained scale on each update", "train_norm": "trained normalization layers"}


def network_settings(left: dict[str, Any], notes: list[str], problem) -> dict[str, Any]:
    """The network, its rank and alpha (kohya's defaults 4 and 1), its layers and whether the text encoder trains."""
    module = str(left.pop("network_module", "networks.lora"))
    args = pairs(left.pop("network_args", []))
    rank = as_number(left.pop("network_dim", 4), "network_dim", problem, int)
    alpha = as_number(left.pop("network_alpha", 1.0), "network_alpha", problem) or float(rank)  # kohya: 0 is = rank
    values: dict[str, Any] = {"rank": rank, "alpha": alpha, "network": "lora",
                              "train_text_encoder": not left.pop("network_train_unet_only", False)}
    if left.pop("dim_from_weights", False) and left.get("network_weights"):  # the rank and alpha are the file's
        del values["rank"], values["alpha"]
    conv_dim, conv_alpha = args.pop("conv_dim", None), args.pop("conv_alpha", None)
    if module == "networks.lora":
        # kohya's LoRA adapts every layer of the transformer blocks; conv_dim adds the ResNet convolutions (LoCon)
        values["lora_layers"] = "full" if conv_dim else "attn-mlp"
        if conv_dim:  # kohya's conv_alpha defaults to 1, and 0 is conv_dim (as network_alpha 0 is the rank)
            conv_rank = as_number(conv_dim, "network_args conv_dim", problem, int)
            values |= {"conv_rank": conv_rank,
                       "conv_alpha": as_number(conv_alpha or 1.0, "network_args conv_alpha", problem) or float(conv_rank)}
        values |= _block_args(args, conv_alpha, notes, problem)
        if "conv_block_ranks" in values:
            values["lora_layers"] = "full"
        values |= _dropouts(args, ("rank_dropout", "module_dropout"), problem)
        threshold = as_number(args.pop("block_lr_zero_threshold", 0) or 0, "network_args block_lr_zero_threshold",
                              problem)
        if threshold and any(key in values for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")):
            values["block_lr_zero_threshold"] = threshold
    elif module == "lycoris.kohya":
        algo = args.pop("algo", "lora")
        dora = str(args.pop("dora_wd", "")).lower() == "true"
        if algo not in LYCORIS_ALGOS:
            problem("network_args", f"LyCORIS algo '{algo}' is not one lowvram trains ({', '.join(LYCORIS_ALGOS)})")
        values["network"] = "dora" if dora and LYCORIS_ALGOS.get(algo) == "lora" else LYCORIS_ALGOS.get(algo, "lora")
        if dora and values["network"] in ("loha", "lokr"):  # LyCORIS decomposes their weights too; peft's do not
            problem("network_args dora_wd", f"LyCORIS's {algo} with weight decomposition is not one lowvram trains "
                    "(its DoRA is LoRA's); set dora_wd=False, or use algo=locon with dora_wd=True")
        preset = args.pop("preset", "full")  # LyCORIS's default preset
        if preset == "unet-transformer-only":  # LyCORIS's attn-mlp on the U-Net alone
            values |= {"lora_layers": "attn-mlp", "train_text_encoder": False}
        elif preset not in LYCORIS_PRESETS:
            problem("network_args", f"LyCORIS preset '{preset}' is not one lowvram trains "
                    f"({', '.join(LYCORIS_PRESETS)}, unet-transformer-only)")
        else:
            values["lora_layers"] = LYCORIS_PRESETS[preset]
        if values.get("lora_layers") == "full":
            notes.append("LyCORIS preset full: trained as --lora-layers full, kohya's LoCon layers, which leave out "
                         "the U-Net's conv_in, conv_out and time embedding that LyCORIS's full adapts too")
        if conv_dim and values.get("lora_layers") == "full":  # LyCORIS's conv_alpha defaults to network_alpha (0: dim)
            conv_rank = as_number(conv_dim, "network_args conv_dim", problem, int)
            values |= {"conv_rank": conv_rank,
                       "conv_alpha": as_number(conv_alpha or alpha, "network_args conv_alpha", problem) or float(conv_rank)}
        tucker = [key for key in ("use_cp", "use_tucker") if str(args.pop(key, "")).lower() == "true"]
        if tucker and "conv_rank" in values:  # it factors the 3x3 convolutions' adapters otherwise than peft's
            problem(f"network_args {tucker[0]}", "LyCORIS's CP (Tucker) decomposition of the convolutions is not one "
                    f"lowvram trains; set {tucker[0]}=False, or drop conv_dim")
        switched = {key for key in ("full_matrix", "decompose_both", "use_scalar", "train_norm")
                    if str(args.pop(key, "")).lower() == "true"}
        if "full_matrix" in switched and values["network"] == "lokr" and "rank" in values:
            values["rank"] = WHOLE_LOKR_RANK  # (LyCORIS ignores it for the other algos)
            if "conv_rank" in values:  # (its convolutions' factors are whole too)
                values["conv_rank"] = WHOLE_LOKR_RANK
            notes.append(f"full_matrix=True: trained as rank {WHOLE_LOKR_RANK}, whose Kronecker factors are whole, "
                         "at scale 1, as LyCORIS trains them")
        for key, what in LYCORIS_UNTRAINED.items():  # (each trains another network than lowvram's)
            if key in switched:
                problem(f"network_args {key}", f"LyCORIS's {key} ({what}) is not one lowvram trains; set {key}=False")
        factor = args.pop("factor", None)
        if factor is not None and values["network"] == "lokr":
            values["lokr_factor"] = as_number(factor, "network_args factor", problem, int)
        values |= _dropouts(args, ("rank_dropout", "module_dropout"), problem)
        if values["network"] in ("loha", "lokr") and left.pop("network_dropout", None):
            notes.append(f"network_dropout: LyCORIS's {algo} has no dropout of its own and ignores it; not carried "
                         "over (module_dropout in network_args leaves out whole layers)")
        on_output = str(args.pop("wd_on_output", "true")).lower()  # (LyCORIS's default now; an older one's was false)
        if values["network"] == "dora" and on_output in ("false", "0"):  # (it trained on the output axis, unsaid)
            problem("network_args wd_on_output", "False: LyCORIS's DoRA on the input axis (one norm per input "
                    "column) is not one lowvram trains (peft's DoRA keeps one per output row); set wd_on_output=True")
    else:
        problem("network_module", f"'{module}' is not a network lowvram trains (networks.lora, or lycoris.kohya with "
                f"algo {', '.join(LYCORIS_ALGOS)})")
    # kohya's part-specific LoRA+ ratios win over loraplus_lr_ratio; a part with neither trains without LoRA+
    shared = args.pop("loraplus_lr_ratio", None)
    unet = args.pop("loraplus_unet_lr_ratio", None) or shared
    text = args.pop("loraplus_text_encoder_lr_ratio", None) or shared or (1 if unet else None)
    if (unet or text) and values["network"] not in ("lora", "dora"):
        notes.append(f"loraplus ratios: LoRA+ speeds up LoRA's up (B) matrices alone, which {values['network']} has "
                     "none of; not carried over")
    if unet and values["network"] in ("lora", "dora"):
        values["loraplus_ratio"] = as_number(unet, "network_args loraplus_lr_ratio", problem)
    if text and values["network"] in ("lora", "dora") and values["train_text_encoder"]:
        text = as_number(text, "network_args loraplus_text_encoder_lr_ratio", problem)
        if text != values.get("loraplus_ratio"):
            values["loraplus_text_encoder_ratio"] = text
    args = {key: value for key, value in args.items() if str(value).lower() not in ("false", "0", "0.0", "")}
    if args:  # (kohya_ss writes LyCORIS's switches off as well: nothing is lost with those)
        notes.append(f"network_args not carried over: {', '.join(f'{k}={v}' for k, v in args.items())}")
    return values


def _dropouts(args: dict[str, Any], keys: tuple[str, ...], problem) -> dict[str, float]:
    """kohya's rank_dropout and module_dropout network_args, where set and the network has them."""
    rates = {key: as_number(args.pop(key), f"network_args {key}", problem) for key in keys if key in args}
    return {key: rate for key, rate in rates.items() if rate}


def _block_args(args: dict[str, Any], conv_alpha: Any, notes: list[str], problem) -> dict[str, str]:
    """kohya's per-block network_args (block_dims, down_lr_weight and the rest) as lowvram's options. Without
    conv_dim, kohya's conv_block_dims take an alpha of 1 (lowvram's default would be network_alpha)."""
    given = {ours: str(args.pop(kohya)) for ours, kohya in BLOCK_OPTIONS.items() if kohya in args}
    for ours in ("down_lr_weight", "up_lr_weight"):  # kohya reads a value without a comma as a curve's name
        text = given.get(ours, "")
        if re.fullmatch(r"\s*[\d.]+\s*", text):
            del given[ours]
            notes.append(f"network_args {ours}={text}: kohya reads a single value as a weight curve's name, finds "
                         f"none, and trains those blocks at 1, as here; for one weight in every block give a list")
    for ours, text in given.items():
        kohya = BLOCK_OPTIONS[ours]
        try:
            check_value(kohya, text, ours.endswith("ranks"))
        except LowvramError as exc:
            problem(f"network_args {kohya}", str(exc).removeprefix(f"{kohya}: "))
    if "conv_block_ranks" in given:
        given.setdefault("conv_block_alphas", f"{float(conv_alpha or 1.0):g}")
    return given
