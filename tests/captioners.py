"""Tiny captioning models built in the test, saved in the layouts real ones ship in: a BLIP-architecture
image-to-text model (random weights, from a config) and a WD14-style ONNX tagger whose tags follow the image's
mean colour, so a caption can be predicted from the image."""

from pathlib import Path

import numpy as np

# (name, category) as selected_tags.csv lists them: 9 rating, 0 general, 4 character
TAGS = (("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
        ("red_theme", 0), ("green_theme", 0), ("blue_theme", 0), ("bright_theme", 0), ("hatsune_miku", 4))
TAGGER_SIDE = 32


def build_tagger(folder: Path) -> Path:
    """model.onnx + selected_tags.csv. Input (batch, 32, 32, 3) BGR 0-255, as WD14's. Scores: a colour tag is
    confident where its channel's mean is above about 150, `bright theme` where all three are, `hatsune miku`
    always scores 0.5, and the rating tags favour `general`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i},{name},{category},100\n" for i, (name, category) in enumerate(TAGS))
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n" + rows)
    weight = np.zeros((3, len(TAGS)), np.float32)
    bias = np.zeros(len(TAGS), np.float32)
    bias[:4] = (3, -3, -3, -3)
    for tag, channel in ((4, 2), (5, 1), (6, 0)):  # BGR: red is the last channel
        weight[channel, tag] = 0.08
        bias[tag] = -12
    weight[:, 7] = 0.03
    bias[7] = -15
    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "weight"], ["logits_w"]),
             helper.make_node("Add", ["logits_w", "bias"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["output"])]
    graph = helper.make_graph(
        nodes, "tagger", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", TAGGER_SIDE, TAGGER_SIDE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"), numpy_helper.from_array(weight, "weight"),
         numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    return folder


WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "blue", "green", "circle", "square",
         "triangle", "on", "background", "picture", "of", "the", "shape")


def build_blip(folder: Path, seed: int = 0) -> Path:
    """A BLIP captioning model (BlipForConditionalGeneration) shrunk to a few layers, with its processor."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(WORDS), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "encoder_hidden_size": 32, "bos_token_id": 5, "sep_token_id": 3,
                     "pad_token_id": 0, "eos_token_id": 3, "max_position_embeddings": 64},
        projection_dim=32)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    return folder
