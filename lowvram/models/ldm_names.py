"""The U-Net's module paths in the original checkpoint layout (CompVis LDM for SD1.x, Stability's sgm for SDXL),
from diffusers' paths: `down_blocks.1.attentions.0.proj_in` is `input_blocks.4.1.proj_in`, a ResNet's `conv1`
its `in_layers.2`. kohya names SDXL LoRA layers this way (`lora_unet_input_blocks_4_1_...`), so lowvram's reader
finds them by it; the tests write original-layout checkpoints with the same table."""

from __future__ import annotations

from collections.abc import Callable

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}

# diffusers prefix -> (original-layout prefix, renames applied to each remaining dotted part of a path)
Table = dict[str, tuple[str, dict[str, str]]]


def unet_table(config: dict, has: Callable[[str], bool]) -> Table:
    """The renames for a U-Net of this `config`; `has(prefix)` says whether the model has parts under it (whether
    a level has attentions, a downsampler, how many mid-block ResNets)."""
    table: Table = {
        "conv_in.": ("input_blocks.0.0.", {}),
        "time_embedding.linear_1.": ("time_embed.0.", {}),
        "time_embedding.linear_2.": ("time_embed.2.", {}),
        "conv_norm_out.": ("out.0.", {}),
        "conv_out.": ("out.2.", {}),
    }
    for embedding in ("add_embedding", "class_embedding"):  # SDXL's "text_time", class-conditioned U-Nets
        table[f"{embedding}.linear_1."] = ("label_emb.0.0.", {})
        table[f"{embedding}.linear_2."] = ("label_emb.0.2.", {})

    # input_blocks: conv_in, then per level `layers` x [resnet, attention?], then [downsample] if any
    per_block = config["layers_per_block"]
    layers = list(per_block) if isinstance(per_block, (list, tuple)) else [per_block] * len(config["down_block_types"])
    slot = 1
    for b, count in enumerate(layers):
        for i in range(count):
            table[f"down_blocks.{b}.resnets.{i}."] = (f"input_blocks.{slot}.0.", RESNET)
            table[f"down_blocks.{b}.attentions.{i}."] = (f"input_blocks.{slot}.1.", {})
            slot += 1
        if has(f"down_blocks.{b}.downsamplers."):
            table[f"down_blocks.{b}.downsamplers.0.conv."] = (f"input_blocks.{slot}.0.op.", {})
            slot += 1

    # middle_block: resnet, attention, resnet (interleaved, numbered consecutively)
    slot, i = 0, 0
    while has(f"mid_block.resnets.{i}."):
        table[f"mid_block.resnets.{i}."] = (f"middle_block.{slot}.", RESNET)
        slot += 1
        if has(f"mid_block.attentions.{i}."):
            table[f"mid_block.attentions.{i}."] = (f"middle_block.{slot}.", {})
            slot += 1
        i += 1

    # output_blocks: per level `layers + 1` x [resnet, attention?, upsample on the level's last one]
    slot = 0
    for b, count in enumerate(reversed(layers)):
        upsample_at = 1
        for i in range(count + 1):
            table[f"up_blocks.{b}.resnets.{i}."] = (f"output_blocks.{slot}.0.", RESNET)
            upsample_at = 1
            if has(f"up_blocks.{b}.attentions.{i}."):
                table[f"up_blocks.{b}.attentions.{i}."] = (f"output_blocks.{slot}.1.", {})
                upsample_at = 2
            slot += 1
        table[f"up_blocks.{b}.upsamplers.0."] = (f"output_blocks.{slot - 1}.{upsample_at}.", {})
    return table


def ldm_path(path: str, table: Table) -> str | None:
    """`path` (a module or a parameter) in the original layout, by its longest prefix in `table`; None if none."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n]) + "."
        if head in table:
            new_head, renames = table[head]
            return (new_head + ".".join(renames.get(p, p) for p in parts[n:])).rstrip(".")
    return None
