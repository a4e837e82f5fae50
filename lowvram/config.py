"""The run configuration: typed, frozen dataclasses that flow from the CLI into the run.

The dataclasses are the schema. Each field's metadata carries its `--help` text (and choices), the CLI
builds its flags from them, a TOML file uses the same names in the same sections, and the resolved config
is written back beside the LoRA in that form, so `--config` can replay any run. Every value passes through
`lowvram.configure.build_config`, which collects all problems and reports them together, each naming the option
and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lowvram.files import expand_home
from lowvram.formats import WEIGHT_FORMATS
from lowvram.optim import OPTIMIZER_CHOICES, OPTIMIZERS, SCHEDULERS, Optimizer, optimizer_name, spec_of
from lowvram.option_values import relocated_source
from lowvram.prompts import (
    SamplePrompt,
    as_prompt_line,
    line_with_trigger,
    parse_prompt,
    read_prompt_file,
    without_lora_tags,
)
from lowvram.run_files import RECORD
from lowvram.samplers import SAMPLERS, sampler_name
from lowvram.timesteps import TIMESTEP_DISTRIBUTIONS, TimestepShape

TIMESTEP_BIASES = ("none", "earlier", "later")
NETWORKS = ("lora", "dora", "loha", "lokr")
# the names of lowvram.models.families.LORA_LAYERS' sets (which builds on this layer: it cannot be imported here)
LORA_LAYERS = ("attn", "attn-mlp", "full")
DEFAULT_LORA_LAYERS = "attn"
UNET_WEIGHTS = ("auto", *WEIGHT_FORMATS)
ATTENTION = ("auto", "xformers", "sdpa", "math")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
SAVE_PRECISION = ("fp16", "bf16", "fp32")
SAVE_PRECISION_ALIASES = {"float": "fp32", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # kohya's, torch's
PREDICTION_TYPES = ("epsilon", "v_prediction")
CHUNK_TOKENS = 75  # CLIP reads 77 tokens: BOS, 75 of the caption, EOS
TOKEN_LENGTHS = tuple(CHUNK_TOKENS * n for n in (1, 2, 3))  # kohya's max_token_length: one to three chunks
LOSSES = ("l2", "l1", "huber", "smooth_l1")  # kohya's --loss_type values
HUBER_LOSSES = ("huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")  # the first is the default, as in kohya
HUBER_C = 0.1  # kohya's default --huber_c
MULTIRES_DISCOUNT = 0.3  # kohya's default --multires_noise_discount
TRAIN_TIMESTEPS = 1000  # the length of SD1.5's and SDXL's noise schedules
ZERO_SNR_NEEDS_V = ("the last timestep's input is pure noise, in which an epsilon model has nothing to predict; it "
                    "needs a v-prediction model (--prediction-type v_prediction if the model is one)")
DEFAULT_EPOCHS = 10  # the run's length where neither --max-steps nor --epochs says it
DEFAULT_SEED = 42
def _recorded_name(folder: Path) -> str | None:
    """The run's name its output folder's run record keeps (lowvram.train.outdir's), if any."""
    try:
        return json.loads((folder / RECORD).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None


KOHYA_SS_MODEL_FOLDER = "model"  # where kohya_ss's Dataset Preparation puts a project's LoRAs, beside img/ and log/
FAMILIES = ("sd15", "sdxl", "tiny", "tiny-sdxl")  # the names of lowvram.models.families.FAMILIES, as LORA_LAYERS
FORMATS = ("kohya", "diffusers")
SAMPLE_DATA = "sample"
CAPTION_SUFFIXES = (".txt", ".caption")  # caption files read beside an image, in this order by default
# the image files a dataset trains on, by suffix, with the Pillow formats each may decode as (a phone's JPEG as MPO)
IMAGE_FORMATS = {".png": ("PNG",), ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".webp": ("WEBP",),
                 ".bmp": ("BMP", "DIB"), ".jfif": ("JPEG",),  # (.jfif: the JPEGs Windows' browsers save)
                 ".tif": ("TIFF",), ".tiff": ("TIFF",),  # (a scanner's, a painting program's: OneTrainer's too)
                 ".avif": ("AVIF",)}  # (a web page's images, saved; Pillow 11.3's wheels and later decode it)
IMAGE_SUFFIXES = tuple(IMAGE_FORMATS)
METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # a folder's captions, as Hugging Face's imagefolder keeps them
MASK_SUFFIX = "-masklabel.png"  # OneTrainer's loss masks: <image stem>-masklabel.png beside the image, never an image
# OneTrainer's label files beside an image, of any type: never images (it leaves them out of the images so too)
LABEL_STEMS = ("-masklabel", "-condlabel")
WRITTEN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what generate writes: those, less uncompressed BMP
FILES_LISTED_UP_TO = 20  # skipped files, and usable ones with notes, that a dataset summary lists without --verbose
PLANNING_MODEL = "sd15"  # what plan and check-data assume without --model: the tiny demo model answers no one
NOT_SAVED = ("resume", "overwrite")  # one run's circumstances, not part of the recipe a saved config replays
# options a 0 switches off, as kohya's 0 does: over a config file's value too (they take no 0 otherwise)
OFF_AT_ZERO = ("save_every", "sample_every", "checkpoint_every", "keep_saves")
PATH_OPTIONS = ("data", "output", "reg_data", "cache_dir", "validation_data", "network_weights",  # made absolute
                "sample_prompt_file", "copy_to")
SOURCE_LISTS = ("base_weights",)  # FILE[:WEIGHT] items, whose files are made absolute as PATH_OPTIONS are
LOCAL_ONLY = ("output", "cache_dir", "copy_to")  # where this machine keeps things: no part of a shared recipe


def save_precision_name(text: str) -> str:
    """A saved LoRA's precision as lowvram names it, from its name in any case or kohya's or torch's (float)."""
    name = SAVE_PRECISION_ALIASES.get(text.lower(), text.lower())
    if name not in SAVE_PRECISION:
        raise ValueError(f"'{text}' is not one of {', '.join(SAVE_PRECISION)}")
    return name


def mixed_precision_name(text: str) -> str:
    """--mixed-precision as accelerate names it ("no" for full precision), from fp32 or torch's names too."""
    name = {"fp32": "no", "float32": "no", "float": "no", "float16": "fp16", "bfloat16": "bf16"}.get(text.lower(),
                                                                                                   text.lower())
    if name not in MIXED_PRECISION:
        raise ValueError(f"'{text}' is not one of {', '.join(MIXED_PRECISION)} (no: full precision, fp32)")
    return name


def scheduler_name(text: str) -> str:
    """--scheduler as lowvram names it, in any case; kohya's schedules that are lowvram's with other options, named
    with those."""
    name = text.lower()
    if name == "cosine_with_min_lr":
        raise ValueError("'cosine_with_min_lr' is kohya's cosine down to a floor: give --scheduler cosine "
                         "--min-lr-ratio R (the floor's share of --lr)")
    if name == "adafactor":
        raise ValueError("'adafactor' is kohya's schedule of Adafactor's own step sizes: give --optimizer adafactor "
                         "--optimizer-arg relative_step=True, which sets them with no schedule")
    if name not in SCHEDULERS:
        raise ValueError(f"'{text}' is not one of {', '.join(SCHEDULERS)}")
    return name


def network_name(text: str) -> str:
    """--network as lowvram names it, in any case; LyCORIS' LoCon is refused with its lowvram spelling."""
    if text.lower() == "locon":
        raise ValueError("'locon' is LyCORIS' name for LoRA with convolutions: give --network lora --lora-layers full "
                         "--conv-rank R")
    if text.lower() == "networks.lora":  # kohya's --network_module
        raise ValueError("'networks.lora' is kohya's network module: give --network lora (--lora-layers attn-mlp "
                         "for kohya's layers, --conv-rank R for its conv_dim)")
    if text.lower().startswith("lycoris"):
        raise ValueError(f"'{text}' is LyCORIS' network module: give its algo as --network (lora for locon, loha, "
                         "lokr)")
    if text.lower() not in NETWORKS:
        raise ValueError(f"'{text}' is not one of {', '.join(NETWORKS)}")
    return text.lower()


def format_name(text: str) -> str:
    """--format in any case; kohya's --save_model_as safetensors is its layout in that file, lowvram's kohya."""
    name = {"safetensors": "kohya"}.get(text.lower(), text.lower())
    if name in ("ckpt", "pt"):
        raise ValueError(f"'{text}': lowvram writes .safetensors only (kohya's layout, which every tool that loads a "
                         "LoRA reads): give --format kohya, or leave it out")
    if name not in FORMATS:
        raise ValueError(f"'{text}' is not one of {', '.join(FORMATS)}")
    return name


def written_rate(rate: float) -> str:
    """A learning rate as people write it: 1e-4, 1.5e-4, 1."""
    return f"{rate:g}" if rate >= 1e-3 else f"{rate:.1e}".replace(".0e", "e").replace("e-0", "e-")


def option(default: Any = None, help: str = "", *, choices: tuple[str, ...] | None = None, metavar: str | None = None,
           flag: str | None = None, spelling=None, text: bool = False):
    """A config field: its default, its `--help` text and, where it has them, the accepted values, a flag
    name other than `--field-name`, `spelling`: the choice another tool's name for it means (ValueError
    when none), and whether it is free `text` (a prompt, a caption's part: checked as UTF-8 on the command line)."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "flag": flag, "spelling": spelling, "text": text}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    model: str | None = option(None, "Base model: a single-file .safetensors checkpoint, a diffusers folder, a hub "
                               "id, or a family name (sd15 and sdxl download from the hub; tiny and tiny-sdxl are "
                               "the built-in demo models). Required for train; plan and check-data default to "
                               f"{PLANNING_MODEL}.", metavar="MODEL")
    model_family: str | None = option(None, "Force the architecture instead of detecting it from the checkpoint.",
                                      choices=FAMILIES)
    base_weights: tuple[str, ...] = option((), "LoRA files merged into the base model before training, each FILE or "
                                           "FILE:WEIGHT (kohya's --base_weights and --base_weights_multiplier): the "
                                           "LoRA trains on top of them. Repeat the flag for several.",
                                           metavar="FILE[:W]", flag="--base-weights")
    vae: str | None = option(None, "A VAE to use instead of the model's: a diffusers VAE folder (e.g. the fp16-fixed "
                             "SDXL VAE, which then runs in fp16) or a .safetensors VAE file.", metavar="PATH")
    prediction_type: str | None = option(None, "What the U-Net predicts; default: what the model's scheduler says "
                                         "(epsilon for SD1.5/SDXL base).", choices=PREDICTION_TYPES)
    zero_terminal_snr: bool = option(False, "Rescale the noise schedule so its last timestep is pure noise (Lin et "
                                     "al. 2023; kohya's --zero_terminal_snr), as v-prediction models such as "
                                     "NoobAI-XL V-Pred were trained; samples then use a trailing timestep spacing. "
                                     "A checkpoint marked so (its ztsnr key, as NoobAI-XL V-Pred's) trains with it "
                                     "whatever this says.")


@dataclass(frozen=True)
class DataConfig:
    data: str | None = option(None, "Image folder: images with same-named .txt/.caption files; kohya-style "
                              "'N_name' subfolders repeat their images N times. Or a dataset file: a kohya "
                              "dataset config (.toml/.json) or a OneTrainer concepts file (.json). 'sample' writes "
                              "and uses the built-in sample dataset.", metavar="DIR")
    resolution: int | None = option(None, "Training resolution in pixels (square; kohya's W,H trains buckets of its "
                                    "area; default: the model's native size: 512 for SD1.5, 1024 for SDXL, 64 for "
                                    "the tiny models).", metavar="PX")
    extra_resolutions: str | None = option(None, "Also train each image at these resolutions, e.g. 512,768 "
                                           "(kohya's datasets of the same images at several resolutions, "
                                           "ai-toolkit's resolution list): an epoch shows every image once at "
                                           "each. Memory is planned for the largest.", metavar="R,R")
    caption_extension: str = option(".txt", "Caption file extension tried first (.txt and .caption are both read); "
                                    "any other is the only one read (kohya's .txt-no: captions from the folder "
                                    "names).")
    caption_column: str | None = option(None, "Column of a folder's metadata.jsonl or metadata.csv (Hugging Face's "
                                        "imagefolder, the diffusers scripts' --train_data_dir) that holds the "
                                        "captions (default: text, caption or prompt, the first it has).",
                                        metavar="NAME")
    caption_template: str = option("{trigger}", "Caption for an image without a caption file; {trigger} is the "
                                   "folder's name without its repeat prefix (ohwx dog of 10_ohwx dog) where that "
                                   "holds the trigger word or there is none, else the trigger word; {filename} the "
                                   "image's file name without its extension, underscores as spaces (SimpleTuner's "
                                   "filename captions).",
                                   text=True)
    trigger_word: str | None = option(None, "Word that activates the LoRA; prepended to captions that lack it.",
                                      text=True)
    caption_prefix: str = option("", "Text written before every caption and a space, after the trigger word is "
                                 "added (kohya's caption_prefix, e.g. \"masterpiece,\"); tag shuffling includes it.",
                                 metavar="TEXT", text=True)
    caption_suffix: str = option("", "Text written after every caption and a space (kohya's caption_suffix, e.g. "
                                 "\", from side\").", metavar="TEXT", text=True)
    reg_data: str | None = option(None, "Regularization (prior-preservation) image folder, same layout as --data; "
                                  "taken in order, cycled or cut, to as many as the training images per epoch (kohya's balance).",
                                  metavar="DIR")
    class_prompt: str | None = option(None, "Caption for a regularization image without a caption file (the "
                                      "diffusers scripts' --class_prompt, e.g. \"a photo of a dog\"); {trigger} is "
                                      "its folder's name without the repeat prefix. Default: that folder name "
                                      "(kohya's class tokens); never --caption-template, the instance's caption.",
                                      metavar="TEXT", text=True)
    prior_loss_weight: float = option(1.0, "Loss weight of regularization images.")
    reg_balance: str = option("kohya", "How an epoch draws the regularization images: as many as the training "
                              "images, each in turn with its repeats (kohya's balance), or each as often as its own "
                              "repeats say (OneTrainer's balancing of a prior-prediction concept).",
                              choices=("kohya", "repeats"))
    prior_prediction: bool = option(False, "Train the regularization images toward the model's own prediction "
                                    "with the adapters off, not toward the noise (OneTrainer's prior prediction): "
                                    "any images then keep what the model did before, no class images it generated "
                                    "needed. Costs a forward pass without gradients per batch that holds them.")
    bucket: bool = option(True, "Aspect-ratio buckets (kohya's); --no-bucket centre-crops every image square.")
    bucket_step: int | None = option(None, "Bucket side step in pixels (default: 64; 16 for the tiny models).")
    min_bucket_side: int | None = option(None, "Smallest bucket side (default: half the resolution; rounded down to "
                                         "the bucket step, as kohya's).", metavar="PX")
    max_bucket_side: int | None = option(None, "Largest bucket side (default: twice the resolution; rounded up to "
                                         "the bucket step, as kohya's).", metavar="PX")
    bucket_no_upscale: bool = option(False, "Give images smaller than the resolution a bucket of their own size "
                                     "instead of enlarging them, and larger ones one of their own aspect ratio "
                                     "(kohya's bucket_no_upscale); the bucket sides then only bound the aspect "
                                     "ratios that train.")
    small_images: str = option("upscale", "Images that must be enlarged to fill their bucket: upscale (with a "
                               "warning in the scan) or skip.", choices=("upscale", "skip"))
    flip: bool = option(False, "Horizontal-flip augmentation (a flipped variant of each image is cached).")
    crop: str = option("center", "Crop to the bucket at the centre, or at random offsets (one per cached "
                       "variant).", choices=("center", "random"))
    color_jitter: float = option(0.0, "Colour jitter strength: brightness, contrast and saturation vary by up to "
                                 "this fraction between cached variants (e.g. 0.1).")
    latent_variants: int | None = option(None, "Augmented variants cached per image (default: 1; 2 with --flip; "
                                         "4 with random crop or colour jitter).", metavar="N")
    shuffle_tags: bool = option(False, "Shuffle comma-separated caption tags (kohya's shuffle_caption).")
    keep_tokens: int = option(0, "Leading caption tags kept in place when shuffling, and never dropped.", metavar="N")
    caption_lines: str = option("first", "A caption file's lines: the first is the caption (kohya's way), each "
                                "line is one, drawn each time the image is trained (OneTrainer's way), or join: the "
                                "lines are one caption's tags (a downloader's tag file, a tag a line).",
                                choices=("first", "each", "join"))
    wildcards: bool = option(False, "Read {a|b|c} in a caption as one of a, b, c, drawn each time the image is "
                             "trained: every combination is one of its captions (half of kohya's enable_wildcard, "
                             "which also draws one of a caption file's lines: add --caption-lines each for that; a "
                             "kohya config's enable_wildcard sets both).")
    caption_separator: str = option(",", "What separates a caption's tags, for --shuffle-tags, --keep-tokens and "
                                    "--tag-dropout (kohya's caption_separator); the tags they vary are joined with "
                                    "', ', as kohya joins them.", metavar="TEXT", text=True)
    secondary_separator: str = option("", "Text that joins words into one tag, which shuffles and drops whole, and "
                                      "is then trained as --caption-separator (kohya's secondary_separator, e.g. "
                                      "\";;;\").", metavar="TEXT", text=True)
    keep_tokens_separator: str = option("", "Text in a caption that ends its tags kept in front (kohya's "
                                        "keep_tokens_separator, e.g. \"|||\"): a caption that has it keeps the tags "
                                        "before it in place, instead of the first --keep-tokens, and those after a "
                                        "second one at the end; the separator is not trained on.", metavar="TEXT",
                                        text=True)
    tag_dropout: float = option(0.0, "Probability that each caption tag past --keep-tokens is left out (kohya's "
                                "caption_tag_dropout_rate), drawn per step, or per cached variant when text "
                                "embeddings are cached.", metavar="P")
    caption_dropout: float = option(0.0, "Probability of training a step on the empty caption.")
    caption_dropout_every: int | None = option(None, "Every Nth epoch trains on the empty caption throughout "
                                               "(kohya's caption_dropout_every_n_epochs).", metavar="N")
    max_token_length: int = option(TOKEN_LENGTHS[0], "Caption tokens the text encoders read (kohya's "
                                   f"max_token_length): {', '.join(map(str, TOKEN_LENGTHS[:-1]))} or "
                                   f"{TOKEN_LENGTHS[-1]}. Longer captions are cut there (with a warning); one "
                                   f"over {CHUNK_TOKENS} tokens is read in {CHUNK_TOKENS}-token chunks, as "
                                   "AUTOMATIC1111 and ComfyUI read long prompts.", metavar="N")
    weighted_captions: bool = option(False, "Read AUTOMATIC1111's emphasis in captions and sample prompts, "
                                     "(red hair:1.2), ((red hair)), [red hair], as kohya's --weighted_captions "
                                     "does: those tokens' text states are weighed.")
    clip_skip: int = option(1, "CLIP layers skipped from the end, as kohya's and AUTOMATIC1111's clip skip: 2 "
                            "reads the penultimate layer, which anime SD1.5 models (NovelAI's descendants) are "
                            "trained for. SD1.5 only: SDXL reads its penultimate layer already.", metavar="N")
    caption_variants: int = option(4, "Caption variants cached per caption when tags are shuffled or dropped.",
                                   metavar="N")
    background: str = option("white", "Colour transparent images are composited on (white, black, grey, #RRGGBB).")
    alpha_mask: bool = option(False, "Use transparency as a loss mask instead of compositing it.")
    masked_loss: bool = option(False, "Train only where an image's mask is white (grey: partly): the mask is a "
                               "<image name>-masklabel.png beside it, as OneTrainer's masks are. Images without one "
                               "train everywhere. Such files are never trained on as images.")
    unmasked_weight: float = option(0.0, "Loss weight outside the mask (--masked-loss, --alpha-mask), e.g. 0.1 to "
                                    "keep some of the background (OneTrainer's unmasked weight).", metavar="W")
    normalize_masked_area_loss: bool = option(False, "Count each masked image's loss over its mask's area, so it "
                                              "weighs as much as an unmasked one (OneTrainer's); by default, as "
                                              "kohya and OneTrainer, over the whole image: a small mask weighs less.")
    masked_prior_weight: float = option(0.0, "Hold the area outside the masks (--masked-loss, --alpha-mask) to the "
                                        "model's own prediction with the adapters off, with this weight (OneTrainer's "
                                        "masked prior preservation weight, e.g. 1): the LoRA learns the subject and "
                                        "leaves the rest as the model had it. Costs a forward pass without gradients "
                                        "per step.", metavar="W")
    cache_dir: str | None = option(None, "Where the latent and text-embedding caches live (content-addressed, "
                                   "shared between runs; default: $LOWVRAM_CACHE_DIR, else "
                                   "$XDG_CACHE_HOME/lowvram or ~/.cache/lowvram).",
                                   metavar="DIR")
    cache_batch_size: int = option(4, "Images or captions encoded at once while caching.")

    @property
    def own_prediction(self) -> bool:
        """Whether training compares with the model's own prediction, adapters off (a forward pass more)."""
        return self.prior_prediction or self.masked_prior_weight > 0


@dataclass(frozen=True)
class NetworkConfig:
    network: str = option("lora", "Adapter type (peft): lora; dora (LoRA plus a learned magnitude per output); "
                          "loha (Hadamard product of two low-rank pairs); lokr (Kronecker product, see "
                          "--lokr-factor). Saved with kohya/LyCORIS key names for ComfyUI and AUTOMATIC1111 (a "
                          "DoRA comes out about a tenth off in ComfyUI, wrong in AUTOMATIC1111; Forge renders it "
                          "as trained).",
                          choices=NETWORKS, spelling=network_name)
    rank: int = option(16, "Rank (dimension) of every adapted layer.", metavar="R")
    alpha: float | None = option(None, "Alpha; the update is scaled by alpha/rank (default: alpha = rank).")
    dropout: float = option(0.0, "Dropout on each LoRA layer's rank activations (its down projection's output) "
                            "during training, as kohya's network_dropout and OneTrainer's dropout (LoRA only).")
    rank_dropout: float = option(0.0, "Probability that each rank of a LoRA layer is left out, per sample and step, "
                                 "the rest scaled up to match (kohya's rank_dropout; LoHa's and LoKr's, LyCORIS's: "
                                 "each row of the update). Not with DoRA.")
    module_dropout: float = option(0.0, "Probability that a layer's whole adapter is left out of a forward pass "
                                   "during training (kohya's and LyCORIS's module_dropout).")
    lora_layers: str = option(DEFAULT_LORA_LAYERS, "Which layers get adapters: attn (attention projections, as "
                              "the diffusers examples); attn-mlp (every layer of the transformer blocks and "
                              "CLIP's MLPs: kohya's default LoRA); full (also the ResNet convolutions: kohya's "
                              "LoCon, often used for styles). More layers: more capacity, a larger file, a little "
                              "more memory.",
                              choices=LORA_LAYERS)
    conv_rank: int | None = option(None, "Rank of the 3x3 convolutions that --lora-layers full adapts (kohya's "
                                   "conv_dim; default: --rank). Linear layers and 1x1 convolutions keep --rank.",
                                   metavar="R")
    conv_alpha: float | None = option(None, "Alpha of those convolutions (kohya's conv_alpha; default: the same "
                                      "alpha/rank scale as the other layers).", metavar="A")
    block_ranks: str | None = option(None, "Rank per U-Net block, comma-separated (kohya's block_dims): 25 values "
                                     "for SD1.5 (IN00-IN11, M00, OUT00-OUT11), 23 for SDXL (its time embedding, "
                                     "IN00-IN08, M00-M02, OUT00-OUT08, its output layers; the first and last hold no "
                                     "adapted layers). 0 leaves a block without adapters. For the linear layers and "
                                     "1x1 convolutions; default: --rank in every block.", metavar="R,R,...")
    block_alphas: str | None = option(None, "Alpha per U-Net block, in --block-ranks' order (kohya's block_alphas), "
                                      "or one value for every block; 0 is the block's rank; default: --alpha in every "
                                      "block (as kohya: a block of lower rank then scales its update up).",
                                      metavar="A,A,...")
    conv_block_ranks: str | None = option(None, "Rank per U-Net block of the 3x3 convolutions that --lora-layers "
                                          "full adapts (kohya's conv_block_dims); 0 leaves them unadapted there; "
                                          "default: --conv-rank.", metavar="R,R,...")
    conv_block_alphas: str | None = option(None, "Their alpha per block (kohya's conv_block_alphas), or one value "
                                           "for every block; default: the 3x3 convolutions' alpha (--conv-alpha).",
                                           metavar="A,A,...")
    down_lr_weight: str | None = option(None, "Learning-rate multipliers of the U-Net's input blocks IN00, IN01, "
                                        "... (kohya's down_lr_weight): comma-separated (missing ones are 1), one "
                                        "value for all, or a curve from the first to the last: cosine, sine, "
                                        "linear, reverse_linear or zeros, +BASE to raise it (e.g. sine+0.5). A "
                                        "block at 0 gets no adapters.", metavar="W,W,...")
    mid_lr_weight: str | None = option(None, "The same for the middle block (SD1.5: M00; SDXL: M00-M02; kohya's "
                                       "mid_lr_weight).", metavar="W,W,...")
    up_lr_weight: str | None = option(None, "The same for the output blocks OUT00, OUT01, ... (kohya's "
                                      "up_lr_weight).", metavar="W,W,...")
    block_lr_zero_threshold: float = option(0.0, "A block whose --down/--mid/--up-lr-weight is at or below this "
                                            "gets no adapters (kohya's block_lr_zero_threshold).", metavar="W")
    lokr_factor: int = option(-1, "LoKr: the factor the first Kronecker matrix's sides are split by (-1: as "
                              "square as possible; 4-16 gives smaller files).", metavar="F")
    train_text_encoder: bool = option(False, "Also train LoRA adapters on the text encoder(s).")
    text_encoder_until: str | None = option(None, "Train the text encoders' adapters for the first N steps ('300'), "
                                            "N epochs ('2e') or a share of the run ('25%') only, then freeze them and "
                                            "train the U-Net alone (OneTrainer's stop_training_after; kohya's "
                                            "--stop_text_encoder_training). Needs --train-text-encoder.",
                                            metavar="N[e|%]")
    network_weights: str | None = option(None, "Start from an existing LoRA file (kohya's --network_weights): "
                                         "its weights fill the adapters before the first step, e.g. to train "
                                         "a LoRA further on new images. Its type, rank, alpha and layers are "
                                         "the run's (--network, --rank, --alpha and --lora-layers, where given, "
                                         "must match them).", metavar="FILE")

    @property
    def resolved_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def lycoris_module_dropout(self) -> float:
        """LoHa's and LoKr's module dropout (peft's own option); 0 for LoRA and DoRA, whose dropouts are
        lowvram.adapters.dropout's."""
        return self.module_dropout if self.network in ("loha", "lokr") else 0.0

    @property
    def lycoris_rank_dropout(self) -> float:
        """LoHa's and LoKr's rank dropout (peft's own option), as lycoris_module_dropout."""
        return self.rank_dropout if self.network in ("loha", "lokr") else 0.0

    @property
    def conv_rank_alpha(self) -> tuple[int, float]:
        """(rank, alpha) of the adapted 3x3 convolutions: --conv-rank and --conv-alpha, by default --rank and
        the alpha that keeps the other layers' alpha/rank scale."""
        rank = self.conv_rank if self.conv_rank is not None else self.rank
        if self.conv_alpha is not None:
            return rank, float(self.conv_alpha)
        return rank, self.resolved_alpha * rank / self.rank

    @property
    def distinct_conv(self) -> tuple[int, float] | None:
        """`conv_rank_alpha` where the convolutions are adapted and differ from the other layers, else None."""
        conv = self.conv_rank_alpha
        return conv if self.lora_layers == "full" and conv != (self.rank, self.resolved_alpha) else None


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = option("adamw", "Optimizer: " + "; ".join(o.help for o in OPTIMIZERS.values()) + "; or any "
                            "other by its class, as kohya's (torch.optim.RAdam, pytorch_optimizer.CAME); kohya's "
                            "names (AdamW8bit, DAdaptAdam) work too.", choices=OPTIMIZER_CHOICES,
                            spelling=optimizer_name)
    lr: float | None = option(None, "Learning rate of the U-Net adapters (default: " + "; ".join(dict.fromkeys(
        written_rate(o.default_lr) + (
            "" if o.default_lr == Optimizer.default_lr else f" for {o.name}")
        for o in OPTIMIZERS.values())) + ").")
    text_encoder_lr: float | None = option(None, "Learning rate of the text-encoder adapters (default: --lr); 0 "
                                           "leaves the (first) text encoder without adapters.")
    text_encoder_2_lr: float | None = option(None, "SDXL: learning rate of the second text encoder's adapters "
                                             "(default: --text-encoder-lr); 0 leaves it without adapters, as "
                                             "kohya's pair of text_encoder_lr and OneTrainer's text_encoder_2 do.")
    weight_decay: float = option(1e-2, "Weight decay, for every optimizer (kohya and OneTrainer configs that give "
                                 "none take the optimizer library's own: 0 for lion, adafactor, prodigy).")
    optimizer_args: tuple[str, ...] = option((), "One of the optimizer's own settings, KEY=VALUE (kohya's "
                                             "optimizer_args; repeat the flag for several): betas=0.9,0.99, eps, "
                                             "amsgrad; prodigy's d_coef, d0, decouple, use_bias_correction, "
                                             "safeguard_warmup, ...", metavar="KEY=VALUE", flag="--optimizer-arg")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this value (0 disables clipping).")
    scheduler: str = option("constant", "Learning-rate schedule (rex: OneTrainer's REX, which holds the rate longer "
                            "than linear then drops it; inverse_sqrt and warmup_stable_decay: transformers', as "
                            "kohya's).", choices=SCHEDULERS, spelling=scheduler_name)
    warmup_steps: float = option(0.0, "Linear warm-up steps (used by every schedule except 'constant'); under 1, a "
                                 "share of the run's steps (0.1: the first tenth), as kohya's and OneTrainer's "
                                 "read it.", metavar="N")
    decay_steps: float = option(0.0, "warmup_stable_decay's decay, over the run's last N steps (under 1, a share of "
                                "the run: kohya's lr_decay_steps).", metavar="N")
    scheduler_cycles: int = option(1, "Restarts of cosine_with_restarts.")
    scheduler_power: float = option(1.0, "Power of the polynomial schedule's decay (1 is linear; kohya's "
                                    "lr_scheduler_power).")
    min_lr_ratio: float = option(0.0, "The decaying schedules (all but the constant ones) "
                                 "decay to this share of the learning rate instead of 0 (OneTrainer's "
                                 "learning_rate_min_factor, kohya's lr_scheduler_min_lr_ratio).", metavar="R")
    scale_weight_norms: float | None = option(None, "Max-norm regularization (kohya's --scale_weight_norms; 1 is "
                                              "usual): after each step, a layer whose update has a "
                                              "norm above this is scaled back to it, which keeps layers from "
                                              "overfitting.", metavar="N")
    loraplus_ratio: float | None = option(None, "LoRA+: the B (up) matrices learn this many times faster than the A "
                                          "(down) ones, which trains LoRA and DoRA faster at the same --lr (kohya's "
                                          "loraplus_lr_ratio; 16 is the paper's value).", metavar="R")
    loraplus_text_encoder_ratio: float | None = option(None, "LoRA+'s ratio for the text encoders' adapters (kohya's "
                                                       "loraplus_text_encoder_lr_ratio; default: --loraplus-ratio).",
                                                       metavar="R")
    ema: bool = option(False, "Keep an exponential moving average of the adapter weights (OneTrainer's and "
                       "SimpleTuner's EMA, diffusers' EMAModel): the LoRA saved, sampled and validated is the "
                       "average, which smooths out the last steps' noise. Costs one more copy of the adapters in "
                       "VRAM (megabytes).")
    ema_decay: float = option(0.999, "How slowly --ema's average follows the weights; it ramps up to this from 0 "
                              "as (1 + step) / (10 + step), so short runs are averaged over their own length.",
                              metavar="D")
    ema_every: int = option(1, "Update --ema's average every N steps, so it spans N times as many (OneTrainer's "
                            "ema_update_step_interval, 5 there).", metavar="N")


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = option(1, "Images per micro-batch.")
    gradient_accumulation: int = option(1, "Micro-batches per optimizer step (effective batch = batch size x this).")
    max_steps: int | None = option(None, "Optimizer steps to train (give this or --epochs; default: "
                                   f"{DEFAULT_EPOCHS} epochs).")
    epochs: int | None = option(None, "Passes over the dataset, repeats included.")
    seed: int = option(DEFAULT_SEED, "Seed for noise, timesteps, data order and LoRA initialisation.")
    mixed_precision: str = option("auto", "Compute precision: auto picks bf16 on GPUs that support it, fp16 on "
                                  "older GPUs, no (fp32) on CPU.", choices=MIXED_PRECISION,
                                  spelling=mixed_precision_name)
    checkpoint_every: str | None = option(None, "Save a resumable checkpoint every N steps ('500') or N epochs "
                                          "('1e': with each epoch's LoRA, as kohya's save_state) (always at the end "
                                          "and on Ctrl-C; 0: only then and by --checkpoint-minutes).",
                                          metavar="N[e]")
    checkpoint_minutes: float = option(30.0, "Also save a resumable checkpoint once this many minutes have passed "
                                       "since the last (0: never), so that a run killed without warning (a notebook "
                                       "cell stopped, a lost connection) loses at most that much.", metavar="MINUTES")
    keep_checkpoints: int = option(2, "Resumable checkpoints kept (the newest).", metavar="K")
    resume: str | None = option(None, "Continue from a checkpoint folder, or 'auto' (or 'latest') for the newest "
                                "in the output folder; with none there yet, 'auto' starts the run.",
                                metavar="PATH|auto")
    noise_offset: float = option(0.0, "Noise offset (e.g. 0.05) so the model learns very dark/bright images.")
    noise_offset_random_strength: bool = option(False, "Each step's noise offset is drawn between 0 and "
                                                "--noise-offset (kohya's --noise_offset_random_strength).")
    adaptive_noise_scale: float = option(0.0, "Add this times each channel's absolute latent mean to the noise "
                                         "offset (kohya's --adaptive_noise_scale, e.g. 0.005): bright or dark images "
                                         "get more of it. Needs --noise-offset.", metavar="S")
    multires_noise_iterations: int | None = option(None, "Multi-resolution (pyramid) noise: this many layers of "
                                                   "coarser noise added (kohya's --multires_noise_iterations; 6-10 "
                                                   "is usual), another way to reach very dark or bright images.",
                                                   metavar="N")
    multires_noise_discount: float | None = option(None, "Weight of each coarser layer relative to the one before "
                                                   f"(default {MULTIRES_DISCOUNT}).", metavar="D")
    ip_noise_gamma: float = option(0.0, "Input perturbation (kohya's --ip_noise_gamma): the U-Net is given latents "
                                   "noised with the noise plus this much more, and still predicts the noise alone; "
                                   "0.1 is usual, 0 is off.", metavar="G")
    ip_noise_gamma_random_strength: bool = option(False, "Each step's input perturbation is drawn between 0 and "
                                                  "--ip-noise-gamma (kohya's --ip_noise_gamma_random_strength).")
    min_snr_gamma: float | None = option(None, "Min-SNR loss weighting gamma (5 is the usual value; off by default).")
    debiased_estimation: bool = option(False, "Weigh each timestep's loss by 1/sqrt(SNR), 1/(SNR+1) for v-prediction "
                                       "(kohya's --debiased_estimation_loss), against the noise of the least noisy "
                                       "steps.")
    scale_v_pred_loss: bool = option(False, "v-prediction: weigh each timestep's loss by SNR/(SNR+1), which scales "
                                     "it as an epsilon model's is (kohya's --scale_v_pred_loss_like_noise_pred).")
    v_pred_like_loss: float = option(0.0, "Add this much of the loss weighed as v-prediction weighs it, (SNR+1)/SNR "
                                     "times, which stresses the noisiest timesteps (kohya's --v_pred_like_loss; "
                                     "0.1 is usual, 0 is off).", metavar="W")
    min_timestep: int | None = option(None, "Train on timesteps from this one (kohya's --min_timestep; default 0).",
                                      metavar="T")
    max_timestep: int | None = option(None, "Train on timesteps below this one (kohya's --max_timestep; default: the "
                                      f"schedule's length, {TRAIN_TIMESTEPS}).", metavar="T")
    timestep_bias: str = option("none", "Draw the earlier (less noisy: detail) or later (noisier: composition) "
                                "timesteps more often, as the diffusers SDXL example's --timestep_bias_strategy "
                                "does.", choices=TIMESTEP_BIASES)
    timestep_bias_multiplier: float = option(2.0, "How many times more often --timestep-bias draws its timesteps.",
                                             metavar="M")
    timestep_bias_portion: float = option(0.25, "The share of the timesteps --timestep-bias favours.", metavar="P")
    timestep_distribution: str = option("uniform", "How timesteps are drawn (OneTrainer's timestep_distribution): "
                                        "uniform; logit_normal (SD3's, favouring the middle); heavy_tail (SD3's "
                                        "mode sampling: the middle with --noising-weight above 0, the ends below); "
                                        "cos_map (the middle, gently); sigmoid (the noisy end); inverted_parabola "
                                        "(peaked at 0.5 + --noising-bias of the range).",
                                        choices=TIMESTEP_DISTRIBUTIONS)
    noising_weight: float = option(0.0, "The shape of --timestep-distribution (OneTrainer's noising_weight): "
                                   "logit_normal's spread less 1, heavy_tail's scale, how steep the sigmoid and "
                                   "how narrow the parabola are.", metavar="W")
    noising_bias: float = option(0.0, "Where --timestep-distribution centres, from the middle of the range "
                                 "(OneTrainer's noising_bias; logit_normal's mean).", metavar="B")
    timestep_shift: float = option(1.0, "Move the drawn timesteps toward the noisy end (above 1) or the clean end "
                                   "(below 1): t -> s t / ((s - 1) t + 1) of the schedule (OneTrainer's "
                                   "timestep_shift).", metavar="S")
    loss: str = option("l2", "The loss between the U-Net's prediction and its target: l2 (mean squared error), l1, or "
                       "kohya's pseudo-Huber losses huber and smooth_l1, which weigh large errors less. The "
                       "validation loss stays l2, so runs compare.", choices=LOSSES)
    huber_c: float | None = option(None, f"Threshold of --loss huber or smooth_l1 where the error turns from "
                                   f"squared to linear, reached at the noisiest timestep (default {HUBER_C}).",
                                   metavar="C")
    huber_schedule: str | None = option(None, "How the Huber threshold moves from 1 at the least noisy timestep to "
                                        f"--huber-c at the noisiest (default {HUBER_SCHEDULES[0]}, following the "
                                        "noise level; constant keeps --huber-c).", choices=HUBER_SCHEDULES)

    @property
    def timestep_shape(self) -> TimestepShape:
        return TimestepShape(self.min_timestep, self.max_timestep, self.timestep_distribution, self.noising_weight,
                             self.noising_bias, self.timestep_shift, self.timestep_bias, self.timestep_bias_multiplier,
                             self.timestep_bias_portion)


@dataclass(frozen=True)
class ValidationConfig:
    """A held-out set whose loss, at fixed timesteps and noise, says when training stops helping."""

    validation_data: str | None = option(None, "Validation image folder (same layout as --data).", metavar="DIR")
    validation_split: float = option(0.0, "Fraction of the training images held out for validation instead "
                                     "(e.g. 0.1; chosen by the seed).")
    validate_every: int | None = option(None, "Validate every N steps (default: once per epoch).", metavar="N")
    validation_timesteps: int = option(4, "Fixed timesteps, evenly spread, each image is validated at.",
                                       metavar="N")
    early_stopping: int | None = option(None, "Stop after this many validations in a row without an improvement "
                                        "(the patience; see --early-stopping-delta); the LoRA of the lowest "
                                        "validation loss is kept as <name>-best.", metavar="N")
    early_stopping_delta: float = option(0.0, "Early stopping counts a validation loss as an improvement only when "
                                         "it is lower than the last improvement by more than this (e.g. 0.001; "
                                         "Lightning's min_delta); <name>-best is still the lowest loss.",
                                         metavar="LOSS")


@dataclass(frozen=True)
class MemoryConfig:
    """The memory strategy: how each part of the model is stored and where it lives during training."""

    unet_weights: str = option("auto", "Storage of the frozen U-Net: " + "; ".join(
        f"{name}, {f.description}" for name, f in WEIGHT_FORMATS.items()) + ". auto: the compute precision "
        "(--auto: the planner's pick).", choices=UNET_WEIGHTS)
    gradient_checkpointing: bool = option(False, "Recompute U-Net activations in backward to save memory "
                                          "(and the text encoders' when they train).")
    checkpoint_blocks: int | None = option(None, "Recompute only N U-Net blocks: those that save the most memory "
                                           "per recomputed FLOP (SD1.5 has 25, SDXL 18). --auto picks the fewest "
                                           "that fit; --gradient-checkpointing alone recomputes all.", metavar="N")
    offload_activations: bool = option(False, "Keep the activations saved for backward in pinned host RAM instead "
                                       "of VRAM, copied back as backward needs them: for the smallest budgets, "
                                       "at the cost of PCIe transfers (combines with --gradient-checkpointing).")
    attention: str = option("auto", "Attention kernels: xformers when installed and working, else PyTorch SDPA "
                            "(flash / memory-efficient), else math.", choices=ATTENTION)
    compile: bool = option(False, "Compile the U-Net's transformer blocks with torch.compile (regional): faster "
                           "steps after a one-time warm-up per image size; trains eagerly where the platform "
                           "cannot compile.")
    cuda_graphs: bool = option(False, "With --compile on CUDA: replay the compiled blocks' training passes as CUDA "
                               "graphs (torch.compile's reduce-overhead mode), fewer kernel launches per step; "
                               "blocks that are recomputed (checkpointing) run compiled without graphs.")
    vae_tiling: bool = option(False, "Run the VAE in 512 px tiles when caching latents and decoding samples: far "
                              "less memory at high resolutions (tiled latents are cached separately).")

    @property
    def checkpointing(self) -> bool:
        """Some or all of the U-Net recomputed in backward (--checkpoint-blocks narrows --gradient-checkpointing)."""
        return self.gradient_checkpointing or self.checkpoint_blocks is not None


@dataclass(frozen=True)
class OutputConfig:
    output: str = option("output", "Output folder for the LoRA, its config, checkpoints and samples.", metavar="DIR")
    name: str | None = option(None, "File name of the LoRA without extension (default: the output folder's name).")
    copy_to: str | None = option(None, "Also write the final LoRA here when the run ends: a .safetensors file, or a "
                                 "folder (ComfyUI's models/loras, AUTOMATIC1111's models/Lora) where it keeps its "
                                 "name. The run's checkpoints, samples and archive stay in --output, out of those "
                                 "LoRA lists; several runs' LoRAs can share the folder (OneTrainer's "
                                 "output_model_destination). A file of another run there is replaced only with "
                                 "--overwrite, and then moved to --output's archive/.", metavar="PATH")
    format: str = option("kohya", "kohya: one .safetensors that ComfyUI and AUTOMATIC1111 load (and diffusers, but "
                         "for LoHa and LoKr, and a DoRA's magnitudes, which its reader drops); diffusers: also a "
                         "diffusers/PEFT folder with adapter metadata (a DoRA whole). Written at training time: no "
                         "command converts a finished file.",
                         choices=FORMATS,
                         spelling=format_name)
    save_every: str | None = option(None, "Also save every N steps ('500') or N epochs ('2e'); 0: no.",
                                    metavar="N[e]")
    keep_saves: int | None = option(None, "Keep only the newest K of the --save-every LoRAs, deleting older ones "
                                    "(kohya's --save_last_n_epochs; default and 0: keep all). A stopped run's "
                                    "LoRA is kept.", metavar="K")
    save_precision: str = option("fp16", "Precision of the saved LoRA.", choices=SAVE_PRECISION,
                                 spelling=save_precision_name)
    overwrite: bool = option(False, "Start over in an output folder that holds an earlier run (one run per "
                             "folder, whatever its --name): its LoRAs, checkpoints and samples move to archive/ "
                             "there.")
    training_comment: str | None = option(None, "A note kept in the LoRA's metadata, which ComfyUI and "
                                          "AUTOMATIC1111 show (kohya's ss_training_comment; default: the trigger "
                                          "word).", metavar="TEXT", text=True)
    metadata_title: str | None = option(None, "The LoRA's title in its modelspec metadata, which model sites and "
                                        "UIs show (default: --name).", metavar="TEXT", text=True)
    metadata_author: str | None = option(None, "Its author, in the modelspec metadata.", metavar="TEXT", text=True)
    metadata_description: str | None = option(None, "Its description, in the modelspec metadata.", metavar="TEXT",
                                              text=True)
    metadata_license: str | None = option(None, "Its license, in the modelspec metadata (e.g. "
                                          "creativeml-openrail-m).", metavar="TEXT", text=True)
    metadata_tags: str | None = option(None, "Its tags, comma-separated, in the modelspec metadata.",
                                       metavar="A,B", text=True)
    no_metadata: bool = option(False, "Write only which network the LoRA holds and for which model, not how it was "
                               "trained (no captions, prompts or settings; kohya's --no_metadata).")
    sample_prompts: tuple[str, ...] = option((), "Prompt(s) to render with the trained LoRA at the end "
                                             "(repeat the flag for several). kohya's inline options work: "
                                             "'a cat --n blurry --w 512 --h 768 --s 28 --l 7 --d 42' (negative "
                                             "prompt, width, height, steps, guidance, seed).", metavar="PROMPT",
                                             flag="--sample-prompt", text=True)
    sample_prompt_file: str | None = option(None, "A file of sample prompts, added to --sample-prompt's: one per "
                                            "line with the inline options (.txt, kohya's --sample_prompts file), or "
                                            "kohya's .toml or .json prompt file.", metavar="FILE")
    sample_steps: int = option(20, "Denoising steps for sample images.")
    sample_sampler: str | None = option(None, "Sampler for sample images (kohya's names: ddim, euler_a, "
                                        "dpmsolver++, ...; a prompt's --ss overrides it); default: the model's "
                                        "own scheduler.", choices=tuple(SAMPLERS),
                                        spelling=sampler_name)
    sample_every: str | None = option(None, "Also render the sample prompts every N steps ('500') or N epochs "
                                      "('2e'), as one grid image per save point; 0: no.", metavar="N[e]")
    sample_at_first: bool = option(False, "Also render the sample prompts before the first step, with the base "
                                   "model alone, to compare against (kohya's --sample_at_first).")
    tensorboard: bool = option(False, "Also log loss, learning rate, gradient norm, VRAM and samples to "
                               "TensorBoard in <output>/logs (pip install 'lowvram[tensorboard]'); "
                               "metrics.jsonl is always written.")
    wandb_project: str | None = option(None, "Also log them to this Weights & Biases project (pip install "
                                       "'lowvram[wandb]', then `wandb login` once; WANDB_MODE=offline keeps the "
                                       "run in <output>/logs for `wandb sync`).", metavar="NAME")
    wandb_run_name: str | None = option(None, "The W&B run's name (default: the LoRA's --name).", metavar="NAME")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, validated."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def alpha(self) -> float:
        return self.network.resolved_alpha

    @property
    def lr(self) -> float:
        if self.optim.lr is not None:
            return self.optim.lr
        return spec_of(self.optim.optimizer).default_lr

    @property
    def multires_noise(self) -> tuple[int, float] | None:
        """(iterations, discount) of multi-resolution noise, or None without it."""
        t = self.training
        if not t.multires_noise_iterations:
            return None
        return t.multires_noise_iterations, (MULTIRES_DISCOUNT if t.multires_noise_discount is None
                                             else t.multires_noise_discount)

    @property
    def huber(self) -> tuple[float, str]:
        """The Huber threshold at the noisiest timestep and its schedule, defaults filled in."""
        t = self.training
        return (t.huber_c if t.huber_c is not None else HUBER_C), (t.huber_schedule or HUBER_SCHEDULES[0])

    @property
    def text_encoder_lr(self) -> float:
        return self.optim.text_encoder_lr if self.optim.text_encoder_lr is not None else self.lr

    def text_encoder_rate(self, index: int) -> float:
        """The learning rate of the text encoder at `index` (0: the first), 0 where it is not trained."""
        if not self.network.train_text_encoder:
            return 0.0
        second = self.optim.text_encoder_2_lr
        return second if index > 0 and second is not None else self.text_encoder_lr

    @cached_property
    def prompt_lines(self) -> tuple[str, ...]:
        """The sample prompts as given: --sample-prompt's, then --sample-prompt-file's, read once (the caches hold
        their embeddings, so they cannot change during the run), the trigger word in ai-toolkit's placeholder
        (without one, left out of each prompt and negative prompt), AUTOMATIC1111's LoRA tags left out."""
        path = self.output.sample_prompt_file
        lines = tuple(map(as_prompt_line, self.output.sample_prompts)) + (
            tuple(read_prompt_file(Path(path))[0]) if path else ())
        return tuple(line_with_trigger(without_lora_tags(line), self.data.trigger_word) for line in lines)

    @property
    def samples(self) -> tuple[SamplePrompt, ...]:
        """The sample prompts with their inline options parsed (validated when the config was built)."""
        return tuple(parse_prompt(line, self.output.sample_sampler) for line in self.prompt_lines)

    @property
    def output_dir(self) -> Path:
        return Path(self.output.output)

    @property
    def output_name(self) -> str:
        """--name, else the output folder's name; a kohya_ss project's model/ folder (beside its img/) names no
        LoRA: the project's folder does (every project's LoRA was model.safetensors, colliding in ComfyUI's list)."""
        folder = self.output_dir.resolve()
        if not self.output.name and folder.name.lower() == KOHYA_SS_MODEL_FOLDER and (folder.parent / "img").is_dir() \
                and _recorded_name(folder) != folder.name:  # (a run named model/ before 2026-12-06 keeps its name)
            return folder.parent.name
        return self.output.name or folder.name

    def to_toml_dict(self) -> dict[str, dict[str, Any]]:
        """Sections of set values (TOML has no null), in the form `--config` reads back."""
        out: dict[str, dict[str, Any]] = {}
        for section in dataclasses.fields(self):
            values = dataclasses.asdict(getattr(self, section.name))
            out[section.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
                                 if v is not None and k not in NOT_SAVED}
        return out

    def to_shareable_dict(self) -> dict[str, dict[str, Any]]:
        """The recipe without this machine's folders, for a LoRA's metadata: models and datasets by their file or
        folder name (a model's hub id or built-in name, no path here, as it is), the output and cache folders left
        out (the `.toml` beside the LoRA keeps them all)."""
        out = self.to_toml_dict()
        for section in out.values():
            for name in list(section):
                if name in LOCAL_ONLY:
                    del section[name]
                elif name in ("model", "vae"):  # (a local folder named as a family, ./sdxl, is not the family)
                    shared = shareable_name(section[name])
                    section[name] = f"./{shared}" if shared != section[name] and shared in FAMILIES else shared
                elif name in PATH_OPTIONS and section[name] != SAMPLE_DATA:
                    section[name] = Path(section[name]).name
                elif name in SOURCE_LISTS:
                    section[name] = [relocated_source(item, lambda path: Path(path.name)) for item in section[name]]
        return out


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}  # type: ignore[misc]


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of an option: what its metadata names, else --field-name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


CHECK_DATA_SKIPS = ("data", "prediction_type")  # the model and data options check-data does not take as flags


def shareable_name(source: str) -> str:
    """A local model by its file or folder name; a hub id or a family name as it is."""
    path = expand_home(source)
    return path.name if path.is_absolute() or path.exists() else source


def as_flag_words(values: dict[str, Any]) -> list[str]:
    """Option values as the command-line words that set them (`--rank`, `8`, `--train-text-encoder`)."""
    words = []
    for name, value in values.items():
        flag = flag_name(fields_by_name()[name][1])
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag.removeprefix("--"))
        else:
            for item in value if isinstance(value, (list, tuple)) else [value]:  # (a list's flag given again)
                text = f"{item:g}" if isinstance(item, float) else str(item)
                words += [f"{flag}={text}"] if text.startswith("-") else [flag, text]  # (argparse's: not a flag)
    return words


@cache
def fields_by_name() -> MappingProxyType[str, tuple[str, dataclasses.Field, Any]]:
    """Every option: name -> (section, field, resolved type). Option names are unique across sections. Built once
    (resolving the type hints takes milliseconds, and every config and flag reads it), and read-only."""
    table = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            table[f.name] = (section, f, hints[f.name])
    return MappingProxyType(table)
