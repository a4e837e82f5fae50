"""What a kohya/LyCORIS file says about the network it holds, read from its safetensors header (and its alphas'
few bytes) without torch: its network type, rank and alpha, its 3x3 convolutions' rank and alpha, the layers it
adapts and whether the text encoders are among them. `--network-weights` takes these as the run's network where
the run does not set them (kohya's --dim_from_weights, for every setting)."""

from __future__ import annotations

import json
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from lowvram.adapters.blocks import BLOCK_OPTIONS
from lowvram.config import as_flag_words
from lowvram.errors import not_safetensors, shell_line
from lowvram.lora_layout import LEFT_OUT, foreign_part, kohya_view, with_adapter_config
from lowvram.models.families import FAMILIES

# where a layer's rank is: the inner side of its low-rank pair
RANK_AXES = (("lora_down.weight", 0), ("hada_w1_b", 0), ("lokr_w2_a", 1), ("lokr_w1_a", 1))
SCALARS = {"F32": "<f", "F16": "<e", "F64": "<d"}
# bytes per element of each safetensors dtype (the format's own list)
ITEM_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
              "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
              "F64": 8, "C64": 8}  # (and sub-byte ones, F4 and F6_*, whose lengths go unchecked)


def read_header(path: Path) -> tuple[dict[str, str], dict[str, dict], int]:
    """(metadata, {tensor name: {"dtype", "shape", "data_offsets"}}, where the data starts). OSError or ValueError
    for a file that is not safetensors."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short for a safetensors file")
        size = struct.unpack("<Q", head)[0]
        if size > 100_000_000:
            raise ValueError("not a safetensors file (its header size is nonsense)")
        text = f.read(size)
        if len(text) < size:  # (a LoRA's metadata may be longer than the part of it a stopped download kept)
            raise ValueError(f"truncated: its header alone needs {8 + size} bytes, the file has {8 + len(text)}")
        try:
            header = json.loads(text)
        except RecursionError:  # (nested a hundred thousand deep: no header)
            raise ValueError("its header nests without end") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file")  # noqa: TRY004 (a file's contents, read as ValueError)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("its metadata is not text by name")
    end = 0
    for name, entry in header.items():  # as the safetensors library checks them, so that readers may trust them
        problem = _entry_problem(entry)
        if problem:
            raise ValueError(f"{name}: {problem}")
        end = max(end, entry["data_offsets"][1])
    actual = Path(path).stat().st_size
    if 8 + size + end > actual:  # cut off: a download or copy that stopped midway
        raise ValueError(f"truncated: its tensors need {8 + size + end} bytes, the file has {actual}")
    return metadata, header, 8 + size


def kohya_header(path: Path) -> tuple[dict[str, str], dict[str, dict], int]:
    """`read_header`, a file in diffusers' or peft's layout seen under kohya's names (`lora_layout`): a layer's
    alpha its metadata gives is an entry {"value": alpha}."""
    metadata, tensors, start = read_header(path)
    view = kohya_view({name: tuple(entry["shape"]) for name, entry in tensors.items()},
                      with_adapter_config(path, metadata))
    if view:
        renames, alphas = view
        tensors = {renames.get(name, name): entry for name, entry in tensors.items()
                   if renames.get(name) != LEFT_OUT} | {
            f"{base}.alpha": {"value": alpha} for base, alpha in alphas.items()}
    return metadata, tensors, start


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one tensor's header entry, if anything."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return "no dtype"
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(type(side) is int and side >= 0 for side in shape):
        return "its shape is not a list of sizes"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        return "its data offsets are not a start and an end"
    count = 1
    for side in shape:
        count *= side
    size = ITEM_SIZES.get(entry["dtype"])
    if size and offsets[1] - offsets[0] != count * size:
        return "its data's length is not its shape's"
    return None


def _scalar(f, entry: dict, start: int) -> float:
    first, _ = entry["data_offsets"]
    f.seek(start + first)
    if entry["dtype"] == "BF16":
        return struct.unpack("<f", struct.pack("<I", struct.unpack("<H", f.read(2))[0] << 16))[0]
    fmt = SCALARS[entry["dtype"]]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


# what a file's network says (network_options' keys): given with --network-weights, a preset's values of these
# yield to the file's, as the user's own do not
FILE_NETWORK_OPTIONS = ("network", "rank", "alpha", "conv_rank", "conv_alpha", "lora_layers", "train_text_encoder",
                        "lokr_factor")


WHOLE_LOKR_RANK = 100_000  # a LoKr of this rank has whole Kronecker factors (LyCORIS's full_matrix; its presets')

# what the names of the convolutions' layers hold, in diffusers' and the original (LDM) layout
CONV_PARTS = ("_resnets_", "_downsamplers_", "_upsamplers_", "_conv_in", "_conv_out", "_in_layers_", "_out_layers_",
              "_skip_connection", "_op")


def layer_ranks(path: Path, tensors: dict[str, dict], start: int
                ) -> tuple[dict[str, dict[str, dict]], tuple[list[tuple[int, float]], list[tuple[int, float]]]]:
    """The file's layers (base name -> suffix -> header entry), and the (rank, alpha) of each: the 3x3
    convolutions' apart from the rest."""
    layers: dict[str, dict[str, dict]] = {}
    for name, entry in tensors.items():
        base, _, suffix = name.partition(".")
        layers.setdefault(base, {})[suffix] = entry
    plain, spatial = [], []
    with open(path, "rb") as f:
        for own in layers.values():
            rank = next((own[key]["shape"][axis] for key, axis in RANK_AXES if key in own), None)
            if rank is None:
                continue
            held = own.get("alpha", {})
            alpha = held["value"] if "value" in held else _scalar(f, held, start) if held.get("dtype") in (
                *SCALARS, "BF16") else float(rank)
            down = own.get("lora_down.weight") or own.get("hada_w1_b") or {"shape": []}
            # (a Tucker LoCon's 3x3 is its lora_mid core, its down a 1x1)
            spatial_layer = "lora_mid.weight" in own or len(down["shape"]) == 4 and down["shape"][-1] > 1
            (spatial if spatial_layer else plain).append((rank, alpha))
    return layers, (plain, spatial)


def network_options(path: Path) -> dict[str, Any]:
    """The network options the file implies (network, rank, alpha, conv_rank, conv_alpha, lora_layers,
    train_text_encoder, lokr_factor); {} for a file of no kohya/LyCORIS layers. Ranks and alphas are the most
    common ones (a file of per-block ranks says its most common block's); a LoRA's or DoRA's 3x3 convolutions
    have their own."""
    metadata, tensors, start = kohya_header(path)
    suffixes = {name.split(".", 1)[1] for name in tensors if "." in name}
    network = next((kind for marker, kind in (("hada_", "loha"), ("lokr_", "lokr"), ("dora_scale", "dora"),
                                               ("lora_down.", "lora")) if any(s.startswith(marker) for s in suffixes)),
                   None)
    if network is None:
        return {}
    layers, (plain, spatial) = layer_ranks(path, tensors, start)
    values: dict[str, Any] = {"network": network}
    # a LoHa's or LoKr's 3x3 factors are flat: its shapes tell no convolution, its LyCORIS preset and conv_dim do
    # (kohya_ss writes conv_dim whatever the preset; LyCORIS's conv_alpha defaults to network_alpha)
    args = _network_args(metadata) if network in ("loha", "lokr") and not spatial else {}
    adapts_convs = metadata.get("lowvram.lora_layers", "full" if args.get("preset", "full") == "full" else "") == "full"
    if adapts_convs and str(args.get("conv_dim", "")).isdigit():  # (their ranks are among the rest's: a LoKr whose
        # linear layers are mostly whole factors, of no rank, was read at its convolutions' rank)
        plain = [(rank, alpha) for rank, alpha in plain if rank != int(args["conv_dim"])] or plain
    if plain or spatial:
        rank, alpha = Counter(plain or spatial).most_common(1)[0][0]
        values |= {"rank": int(rank), "alpha": float(alpha)}
    elif network == "lokr":  # every layer two whole Kronecker factors: a rank no layer splits at
        values |= _whole_factors_rank(metadata)
    if spatial:
        conv_rank, conv_alpha = Counter(spatial).most_common(1)[0][0]
        values |= {"conv_rank": int(conv_rank), "conv_alpha": float(conv_alpha)}
    if args.get("conv_dim") and adapts_convs:
        try:
            values |= {"conv_rank": int(args["conv_dim"]),
                       "conv_alpha": float(args.get("conv_alpha") or values.get("alpha") or args["conv_dim"])}
            spatial = [(values["conv_rank"], values["conv_alpha"])]
        except (TypeError, ValueError):
            pass
    names = " ".join(layers)
    values["lora_layers"] = metadata.get("lowvram.lora_layers") or (
        "full" if spatial or network in ("loha", "lokr") and any(part in names for part in CONV_PARTS)  # (their
        # 3x3 factors are flat: a LyCORIS file's convolutions told by their names)
        else "attn-mlp" if any(part in names for part in ("_ff_net_", "_mlp_fc")) else "attn")
    values["train_text_encoder"] = any(base.startswith("lora_te") for base in layers)
    if network == "lokr":
        try:
            values["lokr_factor"] = int(_network_args(metadata)["factor"])
        except (ValueError, KeyError, TypeError):  # unsaid: the one its shapes imply
            values["lokr_factor"] = _shapes_factor(layers)
    return values


def _whole_factors_rank(metadata: dict[str, str]) -> dict[str, Any]:
    """The rank of a LoKr of whole Kronecker factors alone: its metadata's (kohya_ss's "full rank" 100000), else
    LyCORIS's full_matrix rank, at which no factor splits (their alpha is applied to none)."""
    try:
        return {"rank": int(metadata["ss_network_dim"]), "alpha": float(metadata.get("ss_network_alpha") or 1)}
    except (KeyError, TypeError, ValueError):
        return {"rank": WHOLE_LOKR_RANK, "alpha": 1.0}


def _shapes_factor(layers: dict[str, dict[str, dict]]) -> int:
    """The LoKr factor the layers' (`layer_ranks`) Kronecker factors' shapes imply: `lokr_factor`."""
    return lokr_factor({base: {key: tuple(entry["shape"]) for key, entry in own.items()}
                        for base, own in layers.items()})


def _network_args(metadata: dict[str, str]) -> dict:
    """kohya's and LyCORIS's ss_network_args ({} where absent or unreadable)."""
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
    except ValueError:
        return {}
    return args if isinstance(args, dict) else {}


def shapes_of(tensors: dict[str, dict]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, from a header's entries (`read_header`'s or `kohya_header`'s)."""
    return {name: tuple(entry.get("shape", ())) for name, entry in tensors.items()}


def base_family(metadata: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The family a kohya-named LoRA is for ("sdxl", "sd15"), as AUTOMATIC1111 files it: by what its metadata says,
    else by its layers (two text encoders', or the U-Net's cross-attention width: 768 SD1.5's, 2048 SDXL's); None
    where neither says."""
    said = f"{metadata.get('ss_base_model_version', '')} {metadata.get('modelspec.architecture', '')}"
    if "sdxl" in said or "stable-diffusion-xl" in said:
        return "sdxl"
    if "sd_v1" in said or "stable-diffusion-v1" in said:
        return "sd15"
    widths = {shape[1] for name, shape in shapes.items()
              if name.endswith(("_attn2_to_k.lora_down.weight", "_attn2_to_v.lora_down.weight")) and len(shape) == 2}
    if widths == {2048} or any(name.startswith(("lora_te1_", "lora_te2_")) for name in shapes):
        return "sdxl"
    return "sd15" if widths == {768} else None


def demo_family(metadata: dict[str, str]):
    """The built-in demo family (tiny, tiny-sdxl) a LoRA's metadata says it was trained on: shaped as its full-size
    family, whose keys it has, and loaded by none of that family's checkpoints; None for any other LoRA."""
    family = FAMILIES.get(metadata.get("lowvram.family", ""))
    return family if family and family.full_size else None


def base_model_metadata(metadata: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """kohya's keys naming the base model where `metadata` lacks them and the layers tell it: without them
    AUTOMATIC1111 files a LoRA with any metadata as SD1's, hiding an SDXL one (a resize or merge of a bare file)."""
    family = base_family(metadata, shapes)
    if "ss_base_model_version" in metadata or family is None:
        return {}
    return {"ss_base_model_version": FAMILIES[family].base_model_version, "ss_v2": "False"}


def smaller_side_first(sides: tuple[int, int]) -> tuple[int, int]:
    """A LoKr layer's side split into its Kronecker factors' sides as LyCORIS splits it: the smaller first. peft
    keeps a given factor first even where it is the larger (320 at factor 32: LyCORIS 10 x 32, peft 32 x 10), and
    every LoKr kohya's and LyCORIS's trainers make, which ComfyUI and A1111 apply, has LyCORIS's shapes."""
    return (sides[1], sides[0]) if sides[0] > sides[1] else sides


def larger_side_first(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether a LoKr's Kronecker factors ({tensor name: shape}, kohya's or peft's names) put a side's larger part
    first, as peft splits a side by a factor above its root, and lowvram wrote LoKr files and checkpoints before
    2026-12-05; LyCORIS's, and lowvram's since, put the smaller first."""
    layers: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        base, _, suffix = name.rpartition(".")
        layers.setdefault(base, {})[suffix] = shape
    return any(first > second for own in layers.values() for first, second in _kronecker_splits(own))


def _kronecker_splits(own: dict[str, tuple[int, ...]]) -> set[tuple[int, int]]:
    """(first factor's side, second factor's side) of a LoKr layer's output and input sides ({suffix: shape})."""
    w1 = own.get("lokr_w1") or ((own["lokr_w1_a"][0], own["lokr_w1_b"][1]) if "lokr_w1_a" in own else None)
    if not w1:
        return set()
    if "lokr_w2" in own:
        return {(w1[0], own["lokr_w2"][0]), (w1[1], own["lokr_w2"][1])}
    if "lokr_w2_a" in own:  # a decomposed w2_b holds a convolution's kernel in its input side: output only
        return {(w1[0], own["lokr_w2_a"][0])}
    return set()


def lokr_factor(layers: dict[str, dict[str, tuple[int, ...]]]) -> int:
    """The LoKr factor (LyCORIS's `factor`, peft's decompose_factor) under which each layer's Kronecker factors
    have the shapes a file holds ({layer: {suffix: shape}}): -1 or a factor's side, whichever makes LyCORIS's
    factorization of every layer's sides give them; -1 where none does (or the file is no LoKr)."""
    splits = {split for own in layers.values() for split in _kronecker_splits(own)}
    if not splits:
        return -1
    from peft.tuners.lokr.layer import factorization

    factorization = getattr(factorization, "__wrapped__", factorization)  # (peft's own, not lowvram's split)
    earlier = any(first > second for first, second in splits)  # (peft's split, as lowvram's earlier files)

    def split(side: int, factor: int) -> tuple[int, int]:
        return factorization(side, factor) if earlier else smaller_side_first(factorization(side, factor))

    for factor in (-1, *sorted({side for pair in splits for side in pair if side > 1})):
        if all(split(first * second, factor)[0] == first for first, second in splits):
            return factor
    return -1


def with_network_weights(values: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """The network --network-weights holds (its type, rank, alpha, convolutions' rank and alpha, layers, text
    encoders: `network_options`) beneath the values given, as kohya's --dim_from_weights does for the rank;
    a note on stderr names what the file set, unless `quiet`. Per-block settings keep their own ranks."""
    path = values.get("network_weights")
    if not path:
        return values
    try:
        implied = network_options(Path(path))
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return values  # a missing or broken file is named by the config check, or where it is read
    # an alpha of 0 or below is no option's: the file is refused by network_weights_problem, naming it
    implied = {name: value for name, value in implied.items()
               if not (name.endswith("alpha") and isinstance(value, (int, float)) and value <= 0)}
    if values.get("lora_layers", implied.get("lora_layers")) != "full":  # (a LoCon's convolutions under a --lora-layers
        # given: "--conv-rank: only --lora-layers full adapts them" named a flag not given; its layers' check names
        # the --lora-layers the file was trained with)
        implied = {name: value for name, value in implied.items() if name not in ("conv_rank", "conv_alpha")}
    per_block = any(name in values for name in BLOCK_OPTIONS)
    if per_block:
        implied = {name: value for name, value in implied.items() if name not in ("rank", "alpha")}
    taken = {name: value for name, value in implied.items() if name not in values}
    # (a file of several ranks without the block settings is refused by network_weights_problem: no note first)
    if taken and not quiet and (per_block or not any(mixed_layers(Path(path), implied))):
        print(f"--network-weights: {path} holds {' '.join(as_flag_words(taken))}; trained further with those",
              file=sys.stderr)
    return taken | values


def mixed_layers(path: Path, held: dict[str, Any]) -> tuple[list[int], list[float]]:
    """The ranks of a LoRA or DoRA file whose linear layers (or 3x3 convolutions) are of several, as a --dynamic
    resize, a merge or per-block ranks write them; else ([], its alphas) where they are of one rank but several
    alphas, as a resize of a file of several ranks writes them; ([], []) where each kind has one of each, from one
    read of the file. `held`: its network_options."""
    if held.get("network") not in ("lora", "dora"):
        return [], []  # (a LoHa's or LoKr's convolutions have no 4-D factor to tell them by, nor come of a merge)
    _, tensors, start = kohya_header(path)
    kinds = layer_ranks(path, tensors, start)[1]  # the linear layers' and the 3x3 convolutions'
    if any(len({rank for rank, _ in kind}) > 1 for kind in kinds):
        return sorted({rank for kind in kinds for rank, _ in kind}), []
    alphas = [sorted({alpha for _, alpha in kind}) for kind in kinds]
    if any(kind and not same_alpha(kind[0], kind[-1]) for kind in alphas):
        return [], sorted({alpha for kind in alphas for alpha in kind})
    return [], []


def _lycoris_layers_vary(path: Path, held: dict[str, Any]) -> bool:
    """Whether a LoHa's or LoKr's layers are of several ranks or alphas (its convolutions not told apart): with
    per-block settings in its metadata, they are what continues it (not the most common block's --rank)."""
    if held.get("network") not in ("loha", "lokr"):
        return False
    _, tensors, start = kohya_header(path)
    return len({pair for kind in layer_ranks(path, tensors, start)[1] for pair in kind}) > 1


def same_alpha(stored: float, wanted: float) -> bool:
    """Whether a file's alpha is the one wanted, to the precision of the fp16 or bf16 it is often stored in
    (bf16 keeps 8 bits: 7.3 is stored as 7.3125)."""
    return abs(stored - wanted) <= 2**-8 * max(1.0, abs(wanted))


def no_layers_why(path: Path, fix: bool = True) -> str:
    """Why a file holds no layers lowvram's reader takes, in words: another layout of LoRA, or no LoRA at all (with
    `fix`, for a file given where a LoRA goes: what to give instead)."""
    return no_layers_reason(list(read_header(path)[1]), fix)


def no_layers_reason(names: list[str], fix: bool = True) -> str:
    """`no_layers_why` of a file's tensor names."""
    if names and set(names) <= {"emb_params", "clip_l", "clip_g"}:  # (AUTOMATIC1111's, SDXL's two)
        return ("it is a textual-inversion embedding, not a LoRA: put it in ComfyUI's or AUTOMATIC1111's "
                "embeddings folder")
    if names and all(name.endswith((".diff", ".diff_b", ".alpha")) for name in names):
        return ("it is a LyCORIS full (diff) file: whole weight differences, no low-rank layers; apply it in "
                "ComfyUI or AUTOMATIC1111, or fuse it into the model there")
    if part := foreign_part(names):  # (diffusers' or peft's names of SD's own parts are read: `lora_layout`)
        if "/" in part:  # (adapters.safetensors of a checkpoint: unet/down_blocks...)
            return ("it is a lowvram checkpoint's adapters, not a LoRA: the run's LoRA files are beside its "
                    "checkpoints/ folder, and --resume continues the run")
        return (f"it is a LoRA of another kind of model (its layers are a `{part}`'s, as FLUX's and SD3's are), "
                "not of Stable Diffusion 1.5 or SDXL")
    if any(name.startswith("lora_unet.") for name in names):
        return "its layers are in OneTrainer's dotted naming; save it from OneTrainer in kohya's (lora_unet_...)"
    return "no LoRA, DoRA, LoHa or LoKr layers" + ": name a LoRA file (a model checkpoint is --model)" * fix


def network_weights_problem(network) -> str | None:
    """Where the run's --network, --rank/--alpha or --conv-rank/--conv-alpha (a NetworkConfig) differ from the
    --network-weights file's, the line that names the file's: said before any caching, where the file is read only
    after it. Per-block ranks are compared layer by layer when the file is read."""
    path = network.network_weights
    flag = f"--network-weights: {path}"
    try:
        held = network_options(Path(path))
    except ValueError as exc:  # broken: said before any caching, as `plan` says it
        return "--network-weights: " + not_safetensors(path, exc, "pass a LoRA .safetensors file")
    except (OSError, KeyError, TypeError, IndexError, struct.error):
        return None  # a missing file is named by the config check
    if not held:
        return f"{flag}: {no_layers_why(Path(path))}"
    if held.get("network", network.network) != network.network:
        return f"{flag} holds a {held['network']} network; pass --network {held['network']} to train it further"
    if "lokr_factor" in held and network.lokr_factor != held["lokr_factor"] and (  # (torch's size mismatch; -1,
            # given or not merged in, may split the sides as the file's factor did)
            network.lokr_factor != -1 or _shapes_factor(layer_ranks(Path(path), *kohya_header(Path(path))[1:])[0])
            != -1):
        return (f"{flag} was trained with --lokr-factor {held['lokr_factor']} (this run's: {network.lokr_factor}); "
                f"pass --lokr-factor {held['lokr_factor']}, or leave it out to take the file's")
    for name in ("alpha", "conv_alpha"):  # (else '--alpha: must be > 0', an option never given)
        if isinstance(held.get(name), (int, float)) and held[name] <= 0:
            layers = "layers" if name == "alpha" else "convolutions"
            return (f"{flag}'s {layers} have alpha {held[name]:g}, which scales them to nothing: it applies as no "
                    "LoRA there and cannot be trained further; start without it, or from a LoRA with a positive alpha")
    if any(getattr(network, name) is not None for name in BLOCK_OPTIONS):
        return None
    ranks, alphas = mixed_layers(Path(path), held)
    if ranks or alphas or _lycoris_layers_vary(Path(path), held):
        metadata = read_header(Path(path))[0]
        try:
            args = json.loads(metadata.get("ss_network_args") or "{}")
        except ValueError:
            args = {}
        blocks = {option: args[kohya] for option, kohya in BLOCK_OPTIONS.items()
                  if isinstance(args, dict) and kohya in args and not option.endswith("lr_weight")}
        if blocks:  # trained with ranks (or alphas) per block: its own flags continue it
            flags = " ".join(as_flag_words(blocks))
            what = "ranks" if ranks or any(option.endswith("ranks") for option in blocks) else "alphas"
            return (f"{flag} was trained with {what} per block; pass {flags} to train it "
                    "further")
    if ranks:
        return (f"{flag} holds layers of several ranks ({', '.join(map(str, ranks))}), as a --dynamic resize "
                "or a merge writes them, and lowvram trains on from one rank per block only: train on from the "
                "file it was made from, or fuse it into the model (lowvram merge --model MODEL "
                f"{shell_line(path)} --output fused.safetensors) and train a new LoRA on that")
    if alphas:
        return (f"{flag} holds layers of one rank but several alphas ({', '.join(f'{a:g}' for a in alphas)}), as a "
                "resize of a file of several ranks writes them, and lowvram trains on from one alpha for all: train "
                "on from the file it was made from, or fuse it into the model (lowvram merge --model MODEL "
                f"{shell_line(path)} --output fused.safetensors) and train a new LoRA on that")
    if held.get("conv_rank") and network.lora_layers != "full":  # (said before any caching, not after)
        return (f"{flag} adapts the 3x3 convolutions too (kohya's LoCon), which --lora-layers {network.lora_layers} "
                "leaves out; pass the --lora-layers full it was trained with, or leave --lora-layers out")
    pairs = [("", "rank", "alpha", (network.rank, network.resolved_alpha))]
    if network.lora_layers == "full":
        pairs.append(("3x3 convolutions of ", "conv_rank", "conv_alpha", network.conv_rank_alpha))
    for what, rank_name, alpha_name, (rank, alpha) in pairs:
        if rank_name in held and (held[rank_name] != rank or not same_alpha(held[alpha_name], alpha)):
            flags = as_flag_words({rank_name: held[rank_name], alpha_name: held[alpha_name]})
            return (f"{flag} was trained with {what}rank {held[rank_name]} and alpha {held[alpha_name]:g} (this "
                    f"run's: {rank} and {alpha:g}); pass {' '.join(flags)}, or leave them out to take the file's")
    return None


