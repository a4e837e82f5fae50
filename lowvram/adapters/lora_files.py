"""The adapters' files, written and read: kohya/LyCORIS (LoRA, DoRA, LoHa, LoKr) and diffusers' layout.

The kohya/LyCORIS format (the default) is what ComfyUI and AUTOMATIC1111 map completely: one key prefix per
module, `lora_unet_<module path with _>` (`lora_te_`, `lora_te1_`, `lora_te2_` for the text encoders, whose module
paths always read `text_model.…` there, whatever transformers calls them in memory), then per network type

    lora  .lora_down.weight (rank, in)  .lora_up.weight (out, rank)  .alpha
    dora  the same plus .dora_scale (out, 1): the learned magnitude of each output row (LyCORIS `wd_on_output`)
    loha  .hada_w1_a (out, rank)  .hada_w1_b (rank, in)  .hada_w2_a  .hada_w2_b  .alpha
    lokr  .lokr_w1  .lokr_w2 or .lokr_w2_a/.lokr_w2_b  .alpha

peft's LoHa/LoKr parameters already carry LyCORIS's names, shapes and formulas (delta = (w1a@w1b)*(w2a@w2b) and
kron(w1, w2), times alpha/rank), so they are written as they are. DoRA's file is exactly peft's model in LyCORIS
(and in ComfyUI once it normalizes output-axis DoRA by the adapted weight, Comfy-Org/ComfyUI#15458; today it uses
the base weight's norm); AUTOMATIC1111 reads only input-axis DoRA. diffusers' `load_lora_weights` reads the lora
file, DoRA only in its own layout (it drops `dora_scale` from kohya files), LoHa/LoKr not at all.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from lowvram.adapters.blocks import kohya_block_args, sets_blocks
from lowvram.adapters.networks import (
    ADAPTER,
    NAMES,
    adapted_layers,
    adapted_modules,
    adapter_rank_alpha,
    add_peft_adapter,
    earlier_lokr_shapes,
    fuse_adapters,
    is_spatial,
    layer_patterns,
    peft_config,
    peft_state_dicts,
)
from lowvram.config import NetworkConfig
from lowvram.errors import LowvramError, not_safetensors
from lowvram.files import DiskFull, ensure_room, free_bytes, is_disk_full, is_size_limit, with_plain_modes
from lowvram.kohya_network import LYCORIS_PRESETS
from lowvram.lora_header import (
    base_family,
    demo_family,
    larger_side_first,
    lokr_factor,
    network_options,
    no_layers_reason,
    read_header,
    same_alpha,
)
from lowvram.lora_layout import ADAPTER_METADATA, LEFT_OUT, kohya_view, with_adapter_config
from lowvram.lora_metadata import save_lora
from lowvram.models.ldm_names import ldm_path, unet_table
from lowvram.models.loading import LoadedModel
from lowvram.precision import DTYPES
from lowvram.run_files import DIFFUSERS_WEIGHTS

UNET_KOHYA_PREFIX = "lora_unet"
# the U-Net's layers LyCORIS's full preset adapts and no --lora-layers of lowvram's does: conv_in, conv_out, the
# time (and SDXL's size) embedding, by diffusers' names and by the original layout's of kohya's SDXL files
NEVER_TRAINED = re.compile(rf"{UNET_KOHYA_PREFIX}_(conv_in|conv_out|time_embedding_\w+|add_embedding_\w+|"
                           r"input_blocks_0_0|out_2|time_embed_\w+|label_emb_\w+)")
PRESET_OF_LAYERS = {layers: preset for preset, layers in LYCORIS_PRESETS.items()}  # --lora-layers in LyCORIS's words


def network_metadata(network: NetworkConfig) -> dict[str, str]:
    """kohya's ss_network_* entries that tell UIs, model sites and kohya's own scripts which network the file
    holds, as kohya writes them: LoRA is `networks.lora`; the others are LyCORIS networks (`lycoris.kohya`,
    its `--network_args` as JSON strings). DoRA is LyCORIS's LoRA with `dora_wd`, on the output axis as peft's.
    Adapted convolutions (--lora-layers full) are kohya's `conv_dim`/`conv_alpha` and LyCORIS's `full` preset;
    per-block settings, kohya's `block_dims`, `down_lr_weight` and the rest."""
    alpha = network.resolved_alpha
    meta = {"ss_network_dim": str(network.rank), "ss_network_alpha": f"{alpha:g}", "lowvram.network": network.network,
            "lowvram.lora_layers": network.lora_layers}
    conv_rank, conv_alpha = network.conv_rank_alpha
    shape = {"conv_dim": str(conv_rank), "conv_alpha": f"{conv_alpha:g}"} if network.lora_layers == "full" else {}
    shape |= kohya_block_args(network)
    if network.network == "lora":
        shape |= {key: f"{value:g}" for key, value in (("rank_dropout", network.rank_dropout),
                                                        ("module_dropout", network.module_dropout)) if value}
        return meta | {"ss_network_module": "networks.lora"} | ({"ss_network_args": json.dumps(shape)} if shape else {})
    args = {"algo": "lora" if network.network == "dora" else network.network,
            "preset": PRESET_OF_LAYERS[network.lora_layers], **shape}
    if network.network == "dora":
        args |= {"dora_wd": "True", "wd_on_output": "True"}
        args |= {key: f"{value:g}" for key, value in (("rank_dropout", network.rank_dropout),
                                                       ("module_dropout", network.module_dropout)) if value}
    if network.network == "lokr":
        args["factor"] = str(network.lokr_factor)
    if network.lycoris_rank_dropout:
        args["rank_dropout"] = f"{network.lycoris_rank_dropout:g}"
    if network.lycoris_module_dropout:
        args["module_dropout"] = f"{network.lycoris_module_dropout:g}"
    return meta | {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)}


def kohya_tensors(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One adapted layer's tensors under kohya/LyCORIS names (see the module docstring), scaled so that
    ComfyUI, AUTOMATIC1111 and LyCORIS rebuild exactly the delta peft trained."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    if isinstance(layer, (LoHaLayer, LoKrLayer)):
        own = {name: getattr(layer, name)[ADAPTER] for name in layer.adapter_layer_names
               if ADAPTER in getattr(layer, name)}
        alpha = float(layer.alpha[ADAPTER])
        if "lokr_w1" in own and "lokr_w2" in own:
            # with neither Kronecker factor decomposed there is no rank, and LyCORIS, ComfyUI and A1111 apply no
            # alpha/rank (LyCORIS itself then saves alpha = rank); peft does, so its scale goes into w1
            own["lokr_w1"] = own["lokr_w1"] * layer.scaling[ADAPTER]
            alpha = float(layer.r[ADAPTER])
        return own | {"alpha": torch.tensor(alpha)}
    out = {"lora_down.weight": layer.lora_A[ADAPTER].weight, "lora_up.weight": layer.lora_B[ADAPTER].weight,
           "alpha": torch.tensor(float(layer.lora_alpha[ADAPTER]))}
    if layer.use_dora.get(ADAPTER):
        # peft's magnitude is the norm of each output row of W + (alpha/rank) up@down, shape (out,); LyCORIS
        # (wd_on_output) and ComfyUI tell that axis from the shape (out, 1[, 1, 1]), (1, in) being the input axis
        magnitude = layer.lora_magnitude_vector[ADAPTER].weight
        conv = isinstance(layer.get_base_layer(), torch.nn.Conv2d)
        out["dora_scale"] = magnitude.reshape(-1, 1, 1, 1) if conv else magnitude.reshape(-1, 1)
    return out


def kohya_layers(model: LoadedModel) -> dict[str, tuple[torch.nn.Module, str, torch.nn.Module]]:
    """Every adapted layer by its kohya/LyCORIS key prefix: (its part's module, its path there, the peft layer)."""
    prefixes = {"unet": UNET_KOHYA_PREFIX} | {spec.component: spec.kohya_prefix for spec in model.family.text_encoders}
    unet_paths = kohya_unet_paths(model.unet, model.family)
    out = {}
    for component, module in adapted_modules(model):
        for path, layer in adapted_layers(module):
            if component == "unet":
                kohya_path = unet_paths.get(path, path)
            else:
                kohya_path = path if path.startswith("text_model.") else "text_model." + path
            out[f"{prefixes[component]}_{kohya_path.replace('.', '_')}"] = (module, path, layer)
    return out


def kohya_unet_paths(unet: torch.nn.Module, family) -> dict[str, str]:
    """{diffusers module path: the path kohya's LoRA keys name} for a family whose kohya keys use the original
    layout (SDXL's); {} where they are diffusers' own."""
    if not family.kohya_original_layout:
        return {}
    names = [name for name, _ in unet.named_modules()]
    return {name: original for original, name in _original_layout_paths(unet, names).items()}


def kohya_state_dict(model: LoadedModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All adapters in kohya/LyCORIS naming, with the trained alpha (diffusers' converter writes alpha = rank); an
    alpha past the save precision's range stays fp32 (a full-rank LoKr's alpha = rank, 100000 in kohya_ss's preset,
    was inf in fp16, and the file was refused as broken)."""
    def stored(key: str, tensor: torch.Tensor) -> torch.Tensor:
        past = key == "alpha" and dtype.is_floating_point and tensor.abs().max() > torch.finfo(dtype).max
        return tensor.detach().to(torch.float32 if past else dtype)

    return {f"{base}.{key}": stored(key, tensor)
            for base, (_, _, layer) in kohya_layers(model).items() for key, tensor in kohya_tensors(layer).items()}


def start_from(model: LoadedModel, path: Path, network: NetworkConfig) -> int:
    """Fill the adapters just added with a kohya/LyCORIS file's weights (--network-weights, as kohya's
    --network_weights), so training continues that LoRA; returns how many layers were filled. The file must
    hold this run's network type, rank and alpha, on layers this run adapts; layers it lacks start fresh."""
    flag = "--network-weights"
    _, tensors = read_lora_file(path, flag)
    found = _network_of(tensors, flag, path)
    if found != network.network:
        raise LowvramError(f"{flag}: {path} holds a {NAMES[found]}; pass --network {found} to train it further")
    layers = by_layer(tensors)
    problem = layers_problem(layers)
    if problem:
        raise LowvramError(f"{flag}: {path} {problem}")
    ours = kohya_layers(model)
    ours |= _original_layout_aliases(model.unet, ours)
    first = model.family.text_encoders[0].kohya_prefix  # SDXL's lora_te_ keys are its first encoder's (ComfyUI)
    if first != "lora_te":
        ours |= {"lora_te_" + key.removeprefix(first + "_"): entry for key, entry in ours.items()
                 if key.startswith(first + "_")}
    per_block = sets_blocks(network)
    unknown = sorted(set(layers) - set(ours))
    never = [base for base in unknown if NEVER_TRAINED.fullmatch(base)]
    if never:  # (LyCORIS's full preset adapts them: no --lora-layers of lowvram's does, so naming one was circular)
        names = ", ".join(base.removeprefix(UNET_KOHYA_PREFIX + "_") for base in never)
        raise LowvramError(f"{flag}: {path} adapts the U-Net's {names} (LyCORIS's full preset), which lowvram does "
                           "not train: it cannot continue this file; generate, resize and merge take it, or train a "
                           "new LoRA")
    if unknown:
        raise LowvramError(_not_adapted(path, unknown, per_block))
    problem = named_twice(list(layers), lambda base: id(ours[base][2]))
    if problem:
        raise LowvramError(f"{flag}: {path} {problem}")
    states: dict[int, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}
    for base, own in layers.items():
        module, layer_path, layer = ours[base]
        whole_lokr = "lokr_w1" in own and "lokr_w2" in own  # saved with peft's scale folded into w1 (no rank)
        rank = _rank_of(own)
        file_alpha = float(own.get("alpha", rank))
        conv = is_spatial(layer.get_base_layer())
        want_rank, want_alpha = adapter_rank_alpha(layer)
        if not whole_lokr and (rank != want_rank or not same_alpha(file_alpha, want_alpha)):
            flags = ("the --block-ranks and --block-alphas (--conv-block-* for 3x3 convolutions) it was trained with"
                     if per_block else ("--conv-rank {} --conv-alpha {:g}" if conv else "--rank {} --alpha {:g}"
                                        ).format(rank, file_alpha))
            where = f" at {base} (this run's: {want_rank} and {want_alpha:g})" if per_block else ""
            raise LowvramError(f"{flag}: {path} was trained with {'3x3 convolutions of ' if conv else ''}rank {rank} "
                               f"and alpha {file_alpha:g}{where}; pass {flags}")
        state = states.setdefault(id(module), (module, {}))[1]
        for suffix, tensor in own.items():
            if suffix != "alpha":
                value = _peft_tensor(suffix, tensor).float()
                state[f"{layer_path}.{_peft_suffix(suffix)}"] = (value / layer.scaling[ADAPTER]
                                                                if whole_lokr and suffix == "lokr_w1" else value)
    from peft.utils import set_peft_model_state_dict

    for module, state in states.values():
        try:
            result = set_peft_model_state_dict(module, state)
        except RuntimeError as exc:
            detail = str(exc).splitlines()[-1].strip()
            raise LowvramError(f"{flag}: {path} does not match this run's adapters ({detail}); pass the --network, "
                               "--rank, --lokr-factor and --lora-layers it was trained with") from None
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise LowvramError(f"{flag}: {path} holds tensors this run's adapters have no place for ({unexpected[0]})")
    return len(layers)


def text_layers_problem(path: Path, names: Iterable[str], network: NetworkConfig) -> str | None:
    """start_from's refusal of text-encoder layers where the run trains none, from the names of the file's header
    under kohya's (`lora_header.kohya_header`): said before the caches are filled, not once every image is encoded
    (the config check sees a bare file's type, rank and alpha by its shapes, not these)."""
    text = sorted({name.split(".", 1)[0] for name in names if name.startswith("lora_te")})
    if text and not network.train_text_encoder:
        return _not_adapted(path, text, sets_blocks(network))
    return None


def _not_adapted(path: Path, unknown: list[str], per_block: bool) -> str:
    text = any(not base.startswith(UNET_KOHYA_PREFIX) for base in unknown)
    trained = ["--lora-layers", network_options(Path(path)).get("lora_layers", "full")] + [
        "--train-text-encoder"] * text
    return (f"--network-weights: {path} has layers this run does not adapt ({unknown[0]} and {len(unknown) - 1} "
            f"more); pass the {' '.join(trained)}{' and block settings' if per_block else ''} it was trained with, "
            "and a base model of its family")


def save_kohya(model: LoadedModel, path: Path, alpha: float, precision: str, metadata: dict[str, str]) -> Path:
    """Write the kohya/LyCORIS file. `alpha` is the run's; each layer's own (the same) is what is written."""
    return save_lora(kohya_state_dict(model, DTYPES[precision]), path, metadata,
                     fix="a checkpoint, where one was written, holds the last good weights")


def save_diffusers(model: LoadedModel, folder: Path, precision: str) -> Path:
    """diffusers' own LoRA layout (pytorch_lora_weights.safetensors) with the adapter metadata that keeps
    alpha (without it diffusers reloads with alpha = rank and the outputs are wrong whenever they differ) and
    DoRA (`use_dora`). diffusers loads only LoRA-type adapters, so LoHa and LoKr stay in the kohya file."""
    modules = dict(adapted_modules(model))
    configs = {component: module.peft_config[ADAPTER] for component, module in modules.items()}
    if any(type(config).__name__ != "LoraConfig" for config in configs.values()):
        network = "loha" if any(type(c).__name__ == "LoHaConfig" for c in configs.values()) else "lokr"
        raise LowvramError(f"--format diffusers: diffusers loads only LoRA and DoRA adapters, not {NAMES[network]};"
                           f" the kohya .safetensors in {folder.parent} loads in ComfyUI and AUTOMATIC1111")
    dtype = DTYPES[precision]
    kwargs = {}
    states = peft_state_dicts(model)
    for component, config in configs.items():
        # peft's own key names (lora_A/lora_B), which diffusers' loader reads natively; its converter to the older
        # names rewrites only attention projections, and a file mixing both loses them on reload
        state = states[component]
        if component != "unet" and not hasattr(modules[component], "text_model"):
            # transformers 5 took CLIPTextModel's `text_model` level away; ComfyUI and diffusers with transformers 4
            # read only the names with it (`text_encoder.text_model.encoder.…`), and this diffusers reads both
            state = {"text_model." + key: value for key, value in state.items()}
        # DoRA magnitudes as the parameter is named (`….lora_magnitude_vector.weight`): peft's loader reads both
        # spellings, transformers' `load_adapter` (the text encoders) only this one and drops the bare one
        kwargs[f"{component}_lora_layers"] = {k + ".weight" if k.endswith(".lora_magnitude_vector") else k: v.to(dtype)
                                              for k, v in state.items()}
        meta = config.to_dict()
        if meta.get("exclude_modules"):  # per-block settings left layers out: the adapted ones by name, which
            # diffusers matches to the weights exactly (it would warn about an exclusion or extra targets)
            meta |= {"target_modules": sorted(path for path, _ in adapted_layers(modules[component])),
                     "exclude_modules": None}
        kwargs[f"{component}_lora_adapter_metadata"] = meta
    size = sum(t.nbytes for layers in kwargs.values() if isinstance(layers, dict) for t in layers.values()
               if hasattr(t, "nbytes")) + 2**16
    what = f"the diffusers copy {folder.name}"
    ensure_room(folder.parent, size, what)  # (as every file lowvram writes: whole, or the one before it)
    written, earlier = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    shutil.rmtree(written, ignore_errors=True)
    try:
        written.mkdir(parents=True)
        type(model.pipeline).save_lora_weights(str(written), safe_serialization=True, **kwargs)
        if folder.exists():  # (aside, then away: Windows replaces no folder that exists)
            shutil.rmtree(earlier, ignore_errors=True)
            os.replace(folder, earlier)
        os.replace(written, folder)
        shutil.rmtree(earlier, ignore_errors=True)
    except Exception as exc:  # (safetensors words a full disk as its own error)
        shutil.rmtree(written, ignore_errors=True)
        if earlier.exists() and not folder.exists():  # (the copy before, back where it was)
            os.replace(earlier, folder)
        if is_disk_full(exc):
            raise DiskFull(folder.parent, size, free_bytes(folder.parent), what, is_size_limit(exc)) from None
        if isinstance(exc, OSError):
            raise LowvramError(f"could not write {what} in {folder.parent}: {exc.strerror or exc}") from None
        raise
    return with_plain_modes(folder) / DIFFUSERS_WEIGHTS


def tag_frequency(captions_by_folder: dict[str, list[str]]) -> str:
    """kohya's ss_tag_frequency: per folder, how often each comma-separated tag occurs (in lower case)."""
    freq: dict[str, dict[str, int]] = {}
    for folder, captions in captions_by_folder.items():
        counts = freq.setdefault(folder, {})
        for caption in captions:
            for tag in (t.strip().lower() for t in caption.split(",")):
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
    return json.dumps(freq, ensure_ascii=False)


def load_kohya(model: LoadedModel, path: Path, strength: float = 1.0, flag: str = "--lora") -> str:
    """Apply a kohya/LyCORIS file (LoRA, DoRA, LoHa or LoKr; ours or another trainer's) to the model through
    peft: the inverse of `save_kohya`. diffusers' loader reads plain LoRA only (it drops `dora_scale`).
    Per-layer ranks and alphas are kept (peft's rank/alpha patterns); returns the network type. A DoRA at another
    `strength` than 1 is fused into the weights (`fuse_adapters`). Errors name the file and `flag`, the option it
    came from."""
    from peft import LoKrConfig
    from peft.utils import set_peft_model_state_dict

    metadata, tensors = read_lora_file(path, flag)
    network = _network_of(tensors, flag, path)
    layers = by_layer(tensors)
    problem = layers_problem(layers)
    if problem:
        raise LowvramError(f"{flag}: {path} {problem}")
    earlier = larger_side_first({name: tuple(tensor.shape) for name, tensor in tensors.items()})
    try:
        factor = int(json.loads(metadata.get("ss_network_args") or "{}")["factor"])
    except (ValueError, AttributeError, KeyError, TypeError):
        # no factor said: the one the Kronecker factors' shapes imply (ComfyUI and A1111 need none, peft does)
        factor = lokr_factor({base: {key: tuple(t.shape) for key, t in own.items()} for base, own in layers.items()})
    encoders = model.family.text_encoders
    # ComfyUI reads an SDXL file's lora_te_ keys as the first text encoder's (CLIP-L), as diffusers' converter does
    parts = [((UNET_KOHYA_PREFIX,), model.unet, False)] + [
        ((spec.kohya_prefix, "lora_te") if i == 0 and spec.kohya_prefix != "lora_te" else (spec.kohya_prefix,),
         encoder, True) for i, (spec, encoder) in enumerate(zip(encoders, model.text_encoders))]
    placed = set()
    for prefixes, module, is_text in parts:
        names = [name for name, layer in module.named_modules()
                 if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))]
        # kohya names SDXL's U-Net layers in the original layout (lora_unet_input_blocks_4_1_...)
        paths = {} if is_text else {f"{UNET_KOHYA_PREFIX}_{original.replace('.', '_')}": name
                                    for original, name in _original_layout_paths(module, names).items()}
        for name in names:
            kohya_path = "text_model." + name if is_text and not name.startswith("text_model.") else name
            paths |= {f"{prefix}_{kohya_path.replace('.', '_')}": name for prefix in prefixes}
        found = {paths[base]: own for base, own in layers.items() if base in paths}
        problem = named_twice([base for base in layers if base in paths], paths.get)
        if problem:
            raise LowvramError(f"{flag}: {path} {problem}")
        if not found:
            continue
        placed.update(base for base in layers if base in paths)
        ranks = {name: _rank_of(own) for name, own in found.items()}
        alphas = {name: float(own["alpha"]) if "alpha" in own and not _whole_kronecker(own) else float(ranks[name])
                  for name, own in found.items()}
        rank, alpha = (Counter(values.values()).most_common(1)[0][0] for values in (ranks, alphas))
        config = peft_config(network, tuple(found), rank, alpha, 0.0, factor)
        if isinstance(config, LoKrConfig):
            config.decompose_both = any("lokr_w1_a" in own for own in found.values())
        config.rank_pattern, config.alpha_pattern = layer_patterns(ranks, rank), layer_patterns(alphas, alpha)
        with earlier_lokr_shapes(earlier):
            add_peft_adapter(module, config)
        state = {f"{name}.{_peft_suffix(suffix)}": _peft_tensor(suffix, tensor)
                 for name, own in found.items() for suffix, tensor in own.items() if suffix != "alpha"}
        try:
            loaded = set_peft_model_state_dict(module, state)
        except RuntimeError as exc:  # its first line says only "Error(s) in loading state_dict": the last names one
            if other := other_family(metadata, model.family, f"{flag}: {path}"):
                raise LowvramError(other) from None
            detail = str(exc).strip().splitlines()[-1].strip()
            raise LowvramError(f"{flag}: {path} does not fit {model.family.title}: {detail}; was it trained for "
                               "another model family?") from None
        # a tensor peft's layers have no place for would leave them at their start (zero), the file unapplied; one
        # they lack, at their start (random, or zero): either applies a part of the file
        unplaced = sorted(getattr(loaded, "unexpected_keys", ()))
        if unplaced:
            whole = any({"lokr_w1", "lokr_w2"} & set(key.split(".")) for key in unplaced)
            raise LowvramError(f"{flag}: {path} holds " + ("a whole Kronecker factor beside a split one (a LoKr's "
                               "lokr_w2 with lokr_w1_a/b), which lowvram cannot apply; use it in ComfyUI or "
                               "AUTOMATIC1111" if whole else
                               f"tensors lowvram has no place for ({unplaced[0]}, {len(unplaced)} in all); is it "
                               "a LoRA of another kind?"))
        unfilled = sorted(key for key in getattr(loaded, "missing_keys", ()) if f".{ADAPTER}" in key)
        if unfilled:
            raise LowvramError(f"{flag}: {path} lacks a tensor of a layer ({unfilled[0]}, {len(unfilled)} in all): "
                               "is the file whole?")
        # peft's scaling would scale a DoRA's low-rank part alone, not its whole change (at 0 it would still change
        # the model): fused at its strength, as ComfyUI and AUTOMATIC1111 weigh it
        if network == "dora" and strength != 1:
            fuse_adapters(module, strength)
        for _, layer in adapted_layers(module):
            layer.scaling[ADAPTER] *= strength
    missing = sorted(set(layers) - placed)
    if missing:
        raise LowvramError(f"{flag}: {path} does not fit {model.family.title}: no layer for {missing[0]} (and "
                           f"{len(missing) - 1} more); was it trained for another model family?")
    return network


def _original_layout_paths(unet: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """The U-Net layers `names` by their paths in the original checkpoint layout."""
    table = unet_table(dict(unet.config), lambda head: any(name.startswith(head) for name in names))
    return {original: name for name in names if (original := ldm_path(name, table))}


ORIGINAL_LAYOUT_HEADS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")


def named_twice(bases: list[str], layer_of) -> str | None:
    """Where two of a file's key prefixes name one layer (an SDXL U-Net's, in diffusers' and the original layout),
    the words that say so: a reader would apply one and drop the other."""
    seen: dict = {}
    for base in bases:
        other = seen.setdefault(layer_of(base), base)
        if other != base:
            return (f"holds one layer under two names ({other} and {base}): it joins files of both namings; "
                    "lowvram merge adds such files' layers up")
    return None


def in_original_layout(bases: list[str]) -> dict[str, str]:
    """Where `bases` name an SDXL U-Net's layers both ways (lowvram's earlier SDXL files beside kohya's and its
    own now), {a diffusers-named key prefix: its name in the original layout}, for the SDXL-layout family whose
    U-Net has every one of them under both namings; else {}."""
    from lowvram.models import FAMILIES

    unet = [base for base in bases if base.startswith(UNET_KOHYA_PREFIX + "_")]
    original_named = {base for base in unet if base.startswith(ORIGINAL_LAYOUT_HEADS)}
    diffusers_named = set(unet) - original_named
    if not (original_named and diffusers_named):
        return {}
    for name, family in FAMILIES.items():
        renames = _layout_renames(name) if family.kohya_original_layout else {}
        if diffusers_named <= renames.keys() and original_named <= set(renames.values()):
            return {base: renames[base] for base in diffusers_named}
    return {}


@functools.cache
def _meta_unet(family_name: str) -> torch.nn.Module:
    """The family's U-Net built from its config alone, on the meta device: its layers' names and sides, no weights."""
    from diffusers import UNet2DConditionModel

    from lowvram.models import FAMILIES

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(FAMILIES[family_name].unet_config))


def _original_layout_family(sides: dict[str, int]) -> str | None:
    """The family whose kohya names are the original layout (SDXL's) and whose U-Net has every layer of `sides`
    ({kohya key prefix in diffusers' names: its input side}) at that side; None where none has (SD1.5's)."""
    from lowvram.models import FAMILIES

    for name, family in FAMILIES.items() if sides else ():
        if family.kohya_original_layout and all(_input_sides(name).get(base) == side for base, side in sides.items()):
            return name
    return None


@functools.cache
def _input_sides(family_name: str) -> dict[str, int]:
    """Each U-Net layer's input side by its kohya key prefix in diffusers' names."""
    layers = _meta_unet(family_name).named_modules()
    return {f"{UNET_KOHYA_PREFIX}_{path.replace('.', '_')}": side for path, layer in layers
            if (side := getattr(layer, "in_features", None) or getattr(layer, "in_channels", None))}


@functools.cache
def _layout_renames(family_name: str) -> dict[str, str]:
    """Every U-Net module's kohya key prefix in diffusers' names -> in the original layout, from the family's U-Net
    config alone."""
    unet = _meta_unet(family_name)
    names = [name for name, _ in unet.named_modules()]
    prefix = UNET_KOHYA_PREFIX + "_"
    return {prefix + path.replace(".", "_"): prefix + original.replace(".", "_")
            for original, path in _original_layout_paths(unet, names).items()}


def _original_layout_aliases(unet: torch.nn.Module, layers: dict[str, tuple]) -> dict[str, tuple]:
    """The U-Net's entries of `layers` (kohya_layers) under the other layout's names too: a file may name an SDXL
    U-Net's layers either way (kohya's original layout, or diffusers' as lowvram's earlier files did)."""
    prefix = f"{UNET_KOHYA_PREFIX}_"
    names = [name for name, _ in unet.named_modules()]
    aliases = {}
    for original, path in _original_layout_paths(unet, names).items():
        ours, theirs = (prefix + name.replace(".", "_") for name in (path, original))
        if ours in layers:
            aliases[theirs] = layers[ours]
        elif theirs in layers:
            aliases[ours] = layers[theirs]
    return aliases


def other_family(metadata: dict[str, str], family, said_of: str, shapes: dict[str, tuple[int, ...]] | None = None
                 ) -> str | None:
    """The line for a LoRA whose metadata names another model family than `family`, or, where it names none, whose
    layers (`shapes`, kohya-named: `lora_header.base_family`) are another's (None: the same, or none said)."""
    from lowvram.models import FAMILIES

    said, how = family_said(metadata), "its metadata says"
    if said is None and shapes:
        said, how = FAMILIES.get(base_family(metadata, shapes) or ""), "its layers say"
    demo = demo_family(metadata)
    if demo and demo.name != family.name:  # (shaped as SD1.5's, it loads into no SD1.5 checkpoint)
        return (f"{said_of} is a LoRA for lowvram's built-in {demo.name} demo model (its metadata says), not for "
                f"{family.title}; give --model {demo.name}, or train one on this model")
    if said is None or said.modelspec_architecture == family.modelspec_architecture:
        return None
    return (f"{said_of} is a LoRA for {said.title} ({how}), not for {family.title}; give a {said.title} "
            "model as --model")


def family_said(metadata: dict[str, str]):
    """The full-size family a LoRA's metadata names (modelspec's architecture, kohya's base model version), if any."""
    from lowvram.models import FAMILIES

    for family in FAMILIES.values():  # the full-size ones first: a tiny family names itself as its full-size one
        if metadata.get("modelspec.architecture") == family.modelspec_architecture or \
                metadata.get("ss_base_model_version") == family.base_model_version:
            return family
    return None


def read_lora_file(path: Path, flag: str | None = "--lora") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a .safetensors file, one in diffusers' or peft's layout under kohya's names
    (`in_kohya_names`); a one-line LowvramError (naming `flag`, if any) for a file that is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, tensors = f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as exc:
        why: Exception = exc
        try:  # its own reading names the bytes a cut-off file lacks (safetensors: "incomplete metadata")
            read_header(path)
        except (OSError, ValueError) as named:
            why = named
        raise LowvramError(f"{flag + ': ' if flag else ''}"
                           + not_safetensors(path, why, "pass a LoRA .safetensors file")) from None
    named = in_kohya_names(tensors, with_adapter_config(path, metadata))
    if named is not tensors:  # diffusers' peft settings would misread the kohya file a resize or merge writes
        metadata = {key: value for key, value in metadata.items() if key != ADAPTER_METADATA}
    return metadata, named


def in_kohya_names(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """A LoRA's tensors in diffusers' or peft's layout under kohya's names (`lora_layout.kohya_view`): each layer's
    alpha a tensor, a DoRA's magnitudes shaped as LyCORIS's (out, 1[, 1, 1]). Other files' tensors as they are."""
    view = kohya_view({key: tuple(tensor.shape) for key, tensor in tensors.items()}, metadata)
    if view is None:
        return tensors
    renames, alphas = view
    out = {renames.get(key, key): tensor for key, tensor in tensors.items() if renames.get(key) != LEFT_OUT}
    for key in [key for key in out if key.endswith(".dora_scale")]:
        down = out.get(key.removesuffix("dora_scale") + "lora_down.weight")
        out[key] = out[key].reshape(-1, *[1] * ((down.dim() if down is not None else 2) - 1))
    out |= {f"{base}.alpha": torch.tensor(alpha) for base, alpha in alphas.items()}
    # an SDXL U-Net's layers under kohya's own names (the original layout), which kohya's scripts read
    family = _original_layout_family({key.removesuffix(".lora_down.weight"): tensor.shape[1] for key, tensor in
                                      out.items() if key.startswith(f"{UNET_KOHYA_PREFIX}_") and
                                      key.endswith(".lora_down.weight")})
    if family:
        renames = _layout_renames(family)
        out = {renames.get(base, base) + dot + suffix: tensor
               for key, tensor in out.items() for base, dot, suffix in [key.partition(".")]}
    return out


def by_layer(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """kohya/LyCORIS tensors grouped by layer: {key prefix: {suffix: tensor}}, a LoCon's Tucker core folded into
    its down matrix (`_fold_tucker`), so every reader sees a plain pair."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        base, _, suffix = key.partition(".")
        layers.setdefault(base, {})[suffix] = tensor
    return {base: _fold_tucker(own) for base, own in layers.items()}


def _fold_tucker(own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LyCORIS's LoCon with use_tucker runs a 3x3 convolution through down (rank, in, 1, 1), its core lora_mid
    (rank, rank, k, k) and up: the core applied to down is the plain pair's down (rank, in, k, k), and the
    update up @ that is exactly LyCORIS's (and ComfyUI's), at the same alpha/rank."""
    if "lora_mid.weight" not in own or "lora_down.weight" not in own:
        return own
    own = dict(own)
    mid, down = own.pop("lora_mid.weight"), own["lora_down.weight"]
    folded = torch.einsum("ijhw,jc->ichw", mid.float(), down.flatten(1).float())
    own["lora_down.weight"] = folded.to(down.dtype)
    return own


# what each kohya/LyCORIS layer may hold; other LyCORIS tensors (Tucker cores of LoHa and LoKr, full or bias
# differences, norms, OFT) are named by what they are when refused
READ_SUFFIXES = {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale", "hada_w1_a", "hada_w1_b", "hada_w2_a",
                 "hada_w2_b", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}
FEATURES = {"hada_t": "LoHa's Tucker core (LyCORIS use_tucker)", "lokr_t": "LoKr's Tucker core (LyCORIS use_tucker)",
            "diff": "a full weight difference (LyCORIS full)", "bias": "a bias difference",
            "w_norm": "a norm layer's difference", "b_norm": "a norm layer's difference",
            "oft_": "OFT (LyCORIS diag-oft)"}


def layers_problem(layers: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """What in a file's layers (`by_layer`) lowvram cannot apply exactly, in words (the caller names the file):
    an input-axis DoRA, or a tensor of another LyCORIS feature; a broken file (`broken_layer`). None when every
    layer is read exactly."""
    if broken := broken_layer(layers):
        return broken
    for base, own in layers.items():
        scale, up = own.get("dora_scale"), own.get("lora_up.weight")
        # LyCORIS's wd_on_output=False (A1111's reading) keeps one norm per input column, shape (1, in[, 1, 1]);
        # peft's DoRA, and so lowvram's, has one per output row (out, 1[, 1, 1]): told apart as ComfyUI does
        if scale is not None and up is not None and scale.shape[0] != up.shape[0]:
            return (f"is a DoRA on the input axis (LyCORIS wd_on_output=False: dora_scale {tuple(scale.shape)} at "
                    f"{base}), which lowvram cannot apply (peft's DoRA is on the output axis); retrain it with "
                    "wd_on_output=True (or lowvram --network dora), or apply it in ComfyUI or AUTOMATIC1111")
        other = next((suffix for suffix in own if suffix not in READ_SUFFIXES), None)
        if other:
            feature = next((name for start, name in FEATURES.items() if other.startswith(start)), "a tensor")
            return (f"holds {feature} at {base} ({other}), which lowvram does not read; it applies LoRA, LoCon "
                    "(Tucker too), output-axis DoRA, LoHa and LoKr: apply this file in ComfyUI or AUTOMATIC1111")
    return None


def broken_layer(layers: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """A layer no tool can apply, in words: NaN or infinite values (a diverged run's file, a bad download; applied,
    they turn every image black), or LoRA down and up weights of different ranks."""
    for base, own in layers.items():
        # (a LoKr layer of two whole factors applies no alpha: LyCORIS saves alpha = rank, inf in fp16 at kohya_ss's
        # full-rank 100000, which no tool reads)
        unread = {"alpha"} if {"lokr_w1", "lokr_w2"} <= set(own) else set()
        bad = next((suffix for suffix, tensor in own.items() if tensor.is_floating_point() and suffix not in unread
                    and not torch.isfinite(tensor).all()), None)
        if bad:
            return (f"holds NaN or infinite values at {base} ({bad}): the file is broken (a run that diverged, or a "
                    "download cut short); download it again, or retrain it")
        down, up = own.get("lora_down.weight"), own.get("lora_up.weight")
        if down is not None and up is not None and down.dim() >= 2 and up.dim() >= 2 and down.shape[0] != up.shape[1]:
            return (f"is broken at {base}: its down and up weights are of ranks {down.shape[0]} and {up.shape[1]}; "
                    "download it again, or retrain it")
    return None


def _network_of(tensors: dict[str, torch.Tensor], flag: str, path: Path) -> str:
    suffixes = {key.split(".", 1)[1] for key in tensors if "." in key}
    if any(s.startswith("hada_") for s in suffixes):
        return "loha"
    if any(s.startswith("lokr_") for s in suffixes):
        return "lokr"
    if "lora_down.weight" in suffixes:
        return "dora" if "dora_scale" in suffixes else "lora"
    raise LowvramError(f"{flag}: {path}: {no_layers_reason(list(tensors))}")


def _rank_of(own: dict[str, torch.Tensor]) -> int:
    for key, axis in (("lora_down.weight", 0), ("hada_w1_b", 0), ("lokr_w2_a", 1), ("lokr_w1_a", 1)):
        if key in own:
            return int(own[key].shape[axis])
    if _whole_kronecker(own):  # a rank at which peft keeps the second factor whole too (it splits it below half)
        return max(own["lokr_w2"].shape[:2])
    return max(1, int(float(own.get("alpha", torch.tensor(1.0)))))


def _whole_kronecker(own: dict[str, torch.Tensor]) -> bool:
    """A LoKr layer with both Kronecker factors whole (LyCORIS's full_matrix, or a rank too large for the layer):
    it has no rank, and LyCORIS and ComfyUI apply it unscaled, whatever alpha it stores."""
    return "lokr_w1" in own and "lokr_w2" in own


def _peft_suffix(suffix: str) -> str:
    return {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight",
            "dora_scale": "lora_magnitude_vector"}.get(suffix, suffix)


def _peft_tensor(suffix: str, tensor: torch.Tensor) -> torch.Tensor:
    """LyCORIS's output-axis DoRA scale, (out, 1) or (out, 1, 1, 1), as peft's magnitude: (out,) for a Linear,
    (1, out, 1, 1) for a convolution."""
    if suffix != "dora_scale":
        return tensor
    return tensor.reshape(1, -1, 1, 1) if tensor.dim() == 4 else tensor.reshape(-1)
