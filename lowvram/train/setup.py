"""The stages before the first step, each a function of what the stages before it made: the session (the run
resolved for this machine, accelerate), the scanned data, the frozen model with its caches filled, and the
adapters with their optimizer and schedule. `lowvram.train.loop.train` calls them in this order; the order is
also the order random numbers are drawn in, which a resumed or repeated run relies on."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from lowvram.adapters import lora_files, networks
from lowvram.adapters.blocks import BlockPlan, block_of
from lowvram.attention import attention_problem, set_attention
from lowvram.checkpointing import checkpointed_count, enable_checkpointing
from lowvram.compiling import (
    compile_blocks,
    compile_problem,
    compiled_count,
    cuda_graphs_problem,
    replaying_count,
    uses_cuda_graphs,
)
from lowvram.config import MIXED_PRECISION, ZERO_SNR_NEEDS_V, NetworkConfig, RunConfig
from lowvram.console import console as log_console
from lowvram.data.check import ScannedSets, concept_words, scan_sets
from lowvram.data.epochs import idle_regularization, regularization_balance
from lowvram.data.prepare import PreparedData, prepare_training_data
from lowvram.data.sample import SAMPLE_TRIGGER, write_sample_dataset
from lowvram.errors import LowvramError
from lowvram.files import redraws_in_place
from lowvram.hardware import detect, no_gpu_reason, precision_trouble, resolve_mixed_precision
from lowvram.lora_header import kohya_header, larger_side_first, read_header, shapes_of
from lowvram.memory import PhasePeaks
from lowvram.models.loading import LoadedModel, load_model, zero_terminal_snr_sampler
from lowvram.optim import (
    OPTIMIZERS,
    build_optimizer,
    build_schedule,
    optimizer_kwargs,
    spec_of,
    try_optimizer,
    use_averaged_weights,
)
from lowvram.option_values import parse_source
from lowvram.plan.calibration import graphs_measured, unverified_warning
from lowvram.plan.estimate import checkpoint_unit_names
from lowvram.precision import compute_dtype
from lowvram.quant import convert_frozen, place, storage_bytes
from lowvram.resolve import NATIVE_FORMAT, ResolvedRun, resolve_run
from lowvram.run_files import LORA_SUFFIX
from lowvram.samplers import sampler_problem
from lowvram.train import checkpoint, checkpoint_folders
from lowvram.train.identity import recipe
from lowvram.train.outdir import another_start_problem, existing_lora_problem
from lowvram.train.schedule import Schedule, folder_batches, in_steps, short_run_note

PROCESS_WAIT = timedelta(hours=3)  # how long a process waits for the others at a barrier (the caches filled)


@dataclass
class Session:
    """One process's part in a run: the config resolved for this machine, accelerate's state, its console."""

    run: ResolvedRun
    accelerator: object  # accelerate.Accelerator
    console: Console
    logging: bool = False  # whether the run's log (metrics.jsonl) opened: it then says how the run ended itself
    opened: float = field(default_factory=time.monotonic)  # before the scan, the loading and the caching
    opened_at: float = field(default_factory=time.time)  # the same, as a file's time (what was written since)

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def weight_dtype(self) -> torch.dtype:
        return compute_dtype(self.run.mixed_precision)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def out_dir(self) -> Path:
        return self.config.output_dir


@dataclass
class Dataset(ScannedSets):
    trigger: str | None = None
    trigger_from_folder: bool = False  # the trigger is a kohya concept folder's name (`concept_words`), not given

    @cached_property
    def fingerprint(self) -> dict[str, str]:
        """What a checkpoint keeps of the images and their captions (`checkpoint.data_fingerprint`), and whether
        --validation-split holds each out (the dataset's images that do not train; --validation-data's are apart)."""
        training = {id(record) for record in self.training}
        held = {record.relpath for record in self.reports[0].usable if id(record) not in training}
        return {f"{i}:{path}": facts for i, report in enumerate(self.reports)  # (a regularization set's paths apart)
                for path, facts in checkpoint.data_fingerprint(report.usable, held if i == 0 else ()).items()}


@dataclass
class Trainee:
    """The model with its adapters, and what updates them."""

    model: LoadedModel
    unet: torch.nn.Module  # as accelerate wrapped it (DDP under multi-GPU): the forward passes go through it
    text_encoders: list  # wrapped likewise when they train
    train_text: bool
    adapted: dict[str, torch.nn.Module]  # the adapted parts by component name, as checkpoints store them
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    noise_scheduler: object
    ema: object | None = None  # diffusers' EMAModel of `params` (--ema)
    text_frozen: bool = False  # past --text-encoder-until: the encoders still read the captions, without gradients
    text_rate_groups: dict[str, int] = field(default_factory=dict)  # each trained encoder's plain-rate group, logged
    # --cuda-graphs: the gradients are buffers of their own that backward adds into, zeroed after each update. Set
    # to None instead, the first backward would keep a graph's output memory as a gradient, which the next
    # micro-batch's replay overwrites (CUDA Graph Trees reuse a generation's memory in the next)
    gradients_kept: bool = False

    @property
    def trained_modules(self) -> list[torch.nn.Module]:
        return [self.model.unet, *(self.model.text_encoders if self.train_text else [])]

    @contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """The weights to save, sample and validate inside the block: schedule-free's averaged point, or --ema's
        moving average (the training weights wait in host RAM); the training weights again after it."""
        with use_averaged_weights(self.optimizer):
            if self.ema is not None:
                self.ema.store(self.params)
                self.ema.copy_to(self.params)
            try:
                yield
            finally:
                if self.ema is not None:
                    self.ema.restore(self.params)


def start_session(config: RunConfig, console: Console | None) -> Session:
    """Resolve the run for this machine and start accelerate; every process seeds its own noise."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs, set_seed

    problem = existing_lora_problem(config) or another_start_problem(config)  # before the slow part (outdir.claimed
    # checks the rest)
    if problem:
        raise LowvramError(problem)
    if config.optim.optimizer not in OPTIMIZERS or config.optim.optimizer_args:  # refused before the model loads
        try_optimizer(config.optim.optimizer, config.lr, config.optim.weight_decay, config.optim.optimizer_args,
                      warmup=bool(config.optim.warmup_steps))  # (its length, maybe a share of the steps, comes later)
    run = resolve_run(config, detect())
    if attention_problem(config.memory.attention):  # not after the data is scanned and cached
        raise LowvramError(attention_problem(config.memory.attention))
    checkpoint_unit_names(run.family, config.memory.checkpoint_blocks)  # a count the U-Net lacks stops here
    # accelerate keeps the first Accelerator's precision for the whole process and refuses another; a second run
    # in one process (a notebook, the tests) starts from its own (the process group, PartialState, stays)
    AcceleratorState._reset_state()
    # the other processes wait while the main one fills the caches, which on small cards can take an hour: torch's
    # wait (10 minutes for NCCL, 30 for gloo) ended such runs
    accelerator = Accelerator(mixed_precision=run.mixed_precision, cpu=run.hardware.device == "cpu",
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_WAIT)])
    set_seed(config.training.seed, device_specific=True)
    session = Session(run, accelerator, console or log_console(quiet=not accelerator.is_main_process))
    # `accelerate launch --mixed_precision` (or its config file) sets this; the diffusers scripts train in it
    # ("no" is what accelerate launch sets where neither its flag nor a config file names one: no choice made)
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    launched = None if launched == "no" else launched
    if launched and launched != run.mixed_precision and config.training.mixed_precision == "auto":
        instead = ""
        if launched in MIXED_PRECISION:  # the flag named only where it runs here (fp16 needs a GPU; fp8 is no choice)
            with suppress(LowvramError):
                resolve_mixed_precision(launched, run.hardware)
                instead = f" (--mixed-precision {launched} trains in it)"
        session.console.print(f"accelerate's mixed precision {launched} is not used: lowvram picks "
                              f"{NATIVE_FORMAT[run.mixed_precision]} for {run.hardware.name}{instead}", soft_wrap=True,
                              highlight=False)
    elif launched and launched != run.mixed_precision:  # (the user's own flag: said, as the launcher's is dropped)
        session.console.print(f"accelerate's mixed precision {launched} is not used: --mixed-precision "
                              f"{config.training.mixed_precision} is", soft_wrap=True, highlight=False)
    # said before the model's download and the caching, with --auto or without (a tiny family is the toy one)
    if run.hardware.device == "cpu" and not run.family.full_size and session.main:
        session.console.print(f"[yellow]warning:[/] no CUDA GPU ({escape(no_gpu_reason())}): a full-size model "
                              "trains many times slower on the CPU than on a GPU (a Colab notebook needs a GPU "
                              "runtime: Runtime > Change runtime type)", soft_wrap=True)
    return session


def scan_data(session: Session) -> Dataset:
    """Scan first, so a bad dataset fails before any weight is loaded."""
    config, run, accelerator = session.config, session.run, session.accelerator
    weights = config.network.network_weights
    # another family's LoRA, or text-encoder layers a run training none has no place for: said now, not once the
    # caches are filled
    if weights and not config.training.resume:
        other = None
        with suppress(OSError, ValueError):  # (an unreadable file is said where it is read)
            metadata, tensors, _ = kohya_header(Path(weights))
            other = lora_files.other_family(metadata, run.family, f"--network-weights: {weights}",
                                            shapes_of(tensors)) or lora_files.text_layers_problem(Path(weights),
                                                                                                  tensors,
                                                                                                  config.network)
        if other:
            raise LowvramError(other)
    trigger = config.data.trigger_word
    if run.uses_sample_data:
        data_root = session.out_dir / "sample_data"
        if session.main:  # one writer: another process rewriting the files while the main one scans them changed
            write_sample_dataset(data_root)  # their cache keys, and that process then encoded its own latents
        accelerator.wait_for_everyone()
        trigger = trigger or SAMPLE_TRIGGER
    else:
        data_root = Path(config.data.data)
    with accelerator.main_process_first():  # one process writes the scan index, the others read it
        sets = scan_sets(run, data_root, trigger, session.console)
    for i, report in enumerate(sets.reports):
        report.print_summary(session.console, regularization=i > 0)
    concept = None if trigger else concept_words(sets.training)
    return Dataset(sets.reports, sets.training, sets.held_out, trigger or concept, trigger_from_folder=bool(concept))


def load_frozen_model(session: Session) -> tuple[LoadedModel, object]:
    """The base model, all frozen, in the compute dtype (the VAE in fp32 where it overflows in fp16), and the
    noise schedule it was trained with."""
    config = session.config
    spinner = redraws_in_place(session.console)
    if not spinner:  # a notebook's or a log's reader sees no spinner (its frames would pile up there): a line says it
        session.console.print(f"loading {config.model.model}", soft_wrap=True, highlight=False)
    with session.console.status(f"loading {config.model.model}") if spinner else nullcontext():
        # straight into the compute dtype: an SDXL checkpoint never exists in fp32 in host RAM
        model = load_model(config.model.model, config.model.model_family, dtype=session.weight_dtype,
                           vae=config.model.vae)
    model.text_reading = session.run.text_reading
    merge_base_weights(session, model)
    noise_scheduler = noise_schedules(model, config)
    own = [what for what, found, given in (
        ("v-prediction", noise_scheduler.config.prediction_type == "v_prediction", config.model.prediction_type),
        ("zero terminal SNR", noise_scheduler.config.rescale_betas_zero_snr, config.model.zero_terminal_snr))
        if found and not given]
    if own:  # a NoobAI-style v-pred checkpoint's keys: its loss and samples follow them, as ComfyUI's do
        session.console.print(f"{model.source} predicts with {' and '.join(own)} (its own setting): trained and "
                              "sampled so", soft_wrap=True, highlight=False)
    for module in (model.unet, *model.text_encoders):
        module.requires_grad_(False).to(dtype=session.weight_dtype)
    model.vae.requires_grad_(False).to(dtype=torch.float32 if session.run.vae_fp32 else session.weight_dtype)
    return model, noise_scheduler


def merge_base_weights(session: Session, model: LoadedModel) -> None:
    """--base-weights: each LoRA file fused into the frozen model at its weight (kohya's merge before training), before
    the caches fingerprint the text encoders and before the U-Net is stored as --unet-weights."""
    for item in session.config.model.base_weights:
        path, weight = parse_source(item)
        lora_files.load_kohya(model, path, flag="--base-weights")
        layers = sum(networks.fuse_adapters(module, weight) for module in (model.unet, *model.text_encoders))
        session.console.print(f"merged {path.name} x{weight:g} into the base model ({layers} layers)", soft_wrap=True)


def noise_schedules(model: LoadedModel, config: RunConfig):
    """The training noise schedule, from the one the model was trained with (a checkpoint's v_pred and ztsnr
    markers included); the sampling scheduler of `model.pipeline` is set to match the options."""
    from diffusers import DDPMScheduler

    pipeline = model.pipeline
    if config.model.prediction_type:
        pipeline.scheduler.register_to_config(prediction_type=config.model.prediction_type)
    if config.model.zero_terminal_snr and not pipeline.scheduler.config.get("rescale_betas_zero_snr"):
        pipeline.scheduler = zero_terminal_snr_sampler(pipeline.scheduler)
    zero_snr = pipeline.scheduler.config.get("rescale_betas_zero_snr", False)
    if zero_snr and pipeline.scheduler.config.prediction_type != "v_prediction":
        if config.model.prediction_type == "epsilon" and not config.model.zero_terminal_snr:  # (the epsilon is the
            raise LowvramError(f"--prediction-type epsilon: {config.model.model} has a zero-terminal-SNR schedule (its "
                               "ztsnr key), where the last timestep's input is pure noise and an epsilon prediction "
                               "has nothing to predict; leave --prediction-type out to train as it predicts")  # flag's)
        flag, marker = ("--zero-terminal-snr", "") if config.model.zero_terminal_snr else ("--model", " (its ztsnr key)")
        raise LowvramError(f"{flag}: {config.model.model} predicts epsilon with a zero-terminal-SNR schedule{marker}; "
                           f"{ZERO_SNR_NEEDS_V}")
    for prompt in config.samples:  # a base model's own zero-terminal-SNR schedule shows only now
        problem = prompt.sampler and sampler_problem(prompt.sampler, zero_snr)
        if problem:
            raise LowvramError(f"--sample-sampler: {problem}")
    if config.training.v_pred_like_loss and zero_snr:  # the flag's case is refused with the other options
        raise LowvramError(f"--v-pred-like-loss: {config.model.model} has a zero-terminal-SNR schedule (its ztsnr "
                           "key), where the loss's (SNR+1)/SNR weight is infinite at the last timestep; drop it")
    if config.training.scale_v_pred_loss and pipeline.scheduler.config.prediction_type != "v_prediction":
        raise LowvramError(f"--scale-v-pred-loss: {config.model.model} predicts epsilon, whose loss is scaled so "
                           "already; drop it, or pass --prediction-type v_prediction if the model is a v-prediction one")
    return DDPMScheduler.from_config(pipeline.scheduler.config, rescale_betas_zero_snr=zero_snr)


def fill_caches_and_place(session: Session, model: LoadedModel, dataset: Dataset, peaks: PhasePeaks
                          ) -> tuple[PreparedData, str]:
    """Encode what the caches lack; afterwards only the U-Net (stored as --unet-weights) and the text encoders
    that train use the GPU. Returns the prepared data and the attention kernel chosen."""
    with session.accelerator.main_process_first():  # the main process encodes; the others find it all cached
        prepared = prepare_training_data(session.run, model, dataset, session.device, session.console, peaks)
    convert_frozen(model.unet, session.run.unet_weights, session.weight_dtype)
    place(model.unet, session.device)
    attention = set_attention(model.unet, session.config.memory.attention)
    if session.config.network.train_text_encoder:
        for encoder in model.text_encoders:
            encoder.to(session.device)
    return prepared, attention


def _earlier_lokr_shapes(session: Session) -> bool:
    """Whether the LoKr the run starts from (its checkpoint's, or --network-weights') has the Kronecker shapes
    lowvram wrote before 2026-12-05 (`lora_header.larger_side_first`), which its adapters then take."""
    config = session.config
    if config.network.network != "lokr":
        return False
    with suppress(LowvramError, OSError, ValueError):  # (what cannot be read is said where it is read)
        if config.training.resume:
            found, _ = checkpoint_folders.resolve(config.training.resume, session.out_dir, recipe(session.run))
            source = found / checkpoint_folders.ADAPTERS
        elif config.network.network_weights:
            source = Path(config.network.network_weights)
        else:
            return False
        return larger_side_first(shapes_of(read_header(source)[1]))
    return False


def attach_adapters(session: Session, model: LoadedModel, noise_scheduler, schedule: Schedule) -> Trainee:
    """Adapters (seeded, so the same config gives the same LoRA in every process), checkpointing, the optimizer
    and the learning-rate schedule, wrapped by accelerate for multi-GPU."""
    config, rank = session.config, session.rank
    train_text = config.network.train_text_encoder
    torch.manual_seed(config.training.seed)
    with networks.earlier_lokr_shapes(_earlier_lokr_shapes(session)):
        trainable = networks.add_lora(model, config.network, config.alpha, session.run.trained_text_encoders,
                                      session.run.blocks)
    if config.network.network_weights and not config.training.resume:  # a checkpoint holds them already
        filled = lora_files.start_from(model, Path(config.network.network_weights), config.network)
        fresh = len(lora_files.kohya_layers(model)) - filled  # (a block the file's run trained at rate 0 has none)
        session.console.print(f"adapters start from {config.network.network_weights} ({filled} layers"
                              + (f"; {fresh} this run adapts are not in it and start fresh" if fresh > 0 else "")
                              + ")", soft_wrap=True)
    elif config.network.network_weights and session.main:
        session.console.print(f"--network-weights {config.network.network_weights} is not read: the run resumes from "
                              "its checkpoint, which holds the adapters", soft_wrap=True, highlight=False)
    torch.manual_seed(config.training.seed + rank)
    for _, module in networks.adapted_modules(model):  # every forward that trains runs under autocast, or in fp32
        networks.cast_inputs(module, cast=session.accelerator.mixed_precision == "no")
    if config.memory.checkpointing:
        enable_checkpointing(model.unet, checkpoint_unit_names(session.run.family, config.memory.checkpoint_blocks))
        for spec, encoder in zip(model.family.text_encoders, model.text_encoders):
            if spec.component in session.run.trained_text_encoders:  # one without adapters keeps no activations
                encoder.gradient_checkpointing_enable()
    if config.memory.compile:  # after the adapters: the compiled blocks contain them
        problem = compile_problem(session.device)
        if problem:
            session.console.print(f"[yellow]warning:[/] --compile: {problem}; training without it", soft_wrap=True)
        else:
            graphs = config.memory.cuda_graphs
            if graphs and (problem := cuda_graphs_problem(session.device, session.world,
                                                         config.memory.offload_activations)):
                session.console.print(f"[yellow]warning:[/] --cuda-graphs: {problem}; compiling without them",
                                      soft_wrap=True)
                graphs = False
            compile_blocks(model.unet, schedule.batch_shapes, passes=3 if config.data.own_prediction else 2,
                           cuda_graphs=graphs)
    groups = optimizer_groups(model, trainable, config, session.run.blocks)
    parts = [group.pop("part") for group in groups]
    text_rate_groups = {part: parts.index(part) for part in dict.fromkeys(parts) if part != "unet"}
    optimizer = build_optimizer(config.optim.optimizer, groups, config.optim.weight_decay, schedule.warmup_steps,
                                optimizer_kwargs(config.optim.optimizer, config.optim.optimizer_args))
    # the polynomial schedule decays towards 1e-7 in units of the optimizer's default rate, which kohya sets to its
    # --learning_rate; here the groups carry the rates, and the default would be the optimizer's own (AdamW: 1e-3)
    optimizer.defaults["lr"] = config.lr
    lr_scheduler = build_schedule(config.optim.scheduler, optimizer, schedule.warmup_steps, schedule.total_steps,
                                  config.optim.scheduler_cycles, config.optim.scheduler_power,
                                  in_steps(config.optim.decay_steps, schedule.total_steps), config.optim.min_lr_ratio)
    # wrapped for multi-GPU (DDP), unchanged in one process; the forward passes go through the wrappers. The
    # schedule is not: accelerate's wrapper steps it once per process each call (split_batches=False), which
    # would end warm-up and decay after total_steps / processes
    adapted = networks.adapted_modules(model)
    prepared = session.accelerator.prepare(model.unet, *[m for _, m in adapted[1:]], optimizer)
    wrapped = dict(zip([name for name, _ in adapted], prepared[:-1]))  # an encoder that trains runs wrapped
    text_encoders = [wrapped.get(spec.component, encoder)
                     for spec, encoder in zip(model.family.text_encoders, model.text_encoders)]
    params = [p for part in trainable.values() for p in part]
    ema = None
    if config.optim.ema:  # from the starting weights (--network-weights' included); a resumed run loads its own
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.optim.ema_decay, foreach=True)
    kept = uses_cuda_graphs(model.unet)
    for p in params if kept else ():
        p.grad = torch.zeros_like(p)
    return Trainee(model, prepared[0], text_encoders, train_text, dict(adapted), params, prepared[-1], lr_scheduler,
                   noise_scheduler, ema, gradients_kept=kept, text_rate_groups=text_rate_groups)


def freeze_text_encoders(session: Session, trainee: Trainee, step: int) -> None:
    """--text-encoder-until: from `step` on the text encoders' adapters keep their weights. They take no
    gradients (the optimizer skips them, and their backward pass is saved), and their dropout is off."""
    for encoder in trainee.model.text_encoders:
        encoder.eval()
        for param in encoder.parameters():
            if param.requires_grad:
                param.requires_grad_(False)
                param.grad = None
    trainee.text_frozen = True
    session.console.print(f"the text encoders' adapters are frozen from step {step} on (--text-encoder-until "
                          f"{session.config.network.text_encoder_until}); the U-Net trains on", soft_wrap=True)


def checkpointing_note(unet: torch.nn.Module) -> str:
    recomputed, units = checkpointed_count(unet)
    if not recomputed:
        return ""
    return ", checkpointing" + ("" if recomputed == units else f" {recomputed} of {units} blocks")


def optimizer_groups(model: LoadedModel, trainable: dict[str, list[torch.nn.Parameter]], config: RunConfig,
                     blocks: BlockPlan | None = None) -> list[dict]:
    """One parameter group per part at its learning rate; with LoRA+ (--loraplus-ratio, and for the text encoders
    --loraplus-text-encoder-ratio) each part's B matrices go to a group of their own, at that rate times the ratio;
    with per-block learning-rate weights (`blocks`) the U-Net's parameters are grouped by their block's weight too.
    The first group is the U-Net's at its plain rate wherever there is one: the log's learning rate is its. Each
    group names its `part` (to be taken out before the optimizer sees it); a part's first group is at its plain
    rate."""
    groups = []
    modules = dict(networks.adapted_modules(model))
    optim = config.optim
    rates = {"unet": config.lr} | {spec.component: config.text_encoder_rate(i)
                                   for i, spec in enumerate(model.family.text_encoders)}
    for part, params in trainable.items():
        lr = rates[part]
        ratio = optim.loraplus_ratio if part == "unet" else optim.loraplus_text_encoder_ratio or optim.loraplus_ratio
        layers = networks.adapted_layers(modules[part])
        b_matrices = {id(layer.lora_B[networks.ADAPTER].weight) for _, layer in layers} if ratio else set()
        weights = ({id(p): blocks.lr_weight(path) for path, layer in layers for p in layer.parameters()}
                   if blocks and part == "unet" else {})
        grouped: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
        for p in params:
            grouped.setdefault((id(p) in b_matrices, weights.get(id(p), 1.0)), []).append(p)
        for is_b, weight in sorted(grouped, key=lambda key: (key[0], key[1] != 1.0, -key[1])):
            groups.append({"params": grouped[is_b, weight], "lr": lr * weight * (ratio if is_b else 1), "part": part})
    return groups


def blocks_note(unet: torch.nn.Module, blocks: BlockPlan) -> str:
    """'per block: ranks 2-8 in 9 of 24 blocks, learning-rate weights 0.5-1', from the adapters as added."""
    layers = networks.adapted_layers(unet)
    adapted = {block_of(path, blocks.layout) for path, _ in layers} - {None}
    held = blocks.layout.size - blocks.layout.leading - blocks.layout.trailing - 1  # not IN00 (conv_in) either
    ranks = [networks.adapter_rank_alpha(layer)[0] for _, layer in layers]
    weights = {blocks.lr_weight(path) for path, _ in layers}

    def span(values) -> str:
        low, high = min(values, default=0), max(values, default=0)
        return f"{low:.2g}" if low == high else f"{low:.2g}-{high:.2g}"

    return (f"per block: ranks {span(ranks)} in {len(adapted)} of {held} blocks"
            + (f", learning-rate weights {span(weights)}" if weights - {1.0} else ""))


def compiled_note(unet: torch.nn.Module, batch_shapes: int) -> str:
    count = compiled_count(unet)
    if not count:
        return ""
    replaying = replaying_count(unet)
    graphs = f"; {replaying} replay CUDA graphs in training" if replaying else ""
    return f", {count} blocks compiled (for up to {batch_shapes} input shapes, each compiled at its first step{graphs})"


def conv_note(network: NetworkConfig) -> str:
    conv = network.distinct_conv
    return f" (3x3 convolutions rank {conv[0]} alpha {conv[1]:g})" if conv else ""


# output folder names that name no LoRA: every project's would be output.safetensors in a LoRA list
FOLDER_WORDS = {"output", "outputs", "out", "lora", "loras", "result", "results", "models", "train", "training"}


def describe(session: Session, trainee: Trainee, dataset: Dataset, prepared: PreparedData, attention: str,
             schedule: Schedule) -> None:
    """The run in one paragraph; a warning where warm-up fills most of the run, and where no GPU result shows
    its strategy training."""
    config, run, model = session.config, session.run, trainee.model
    world, data = session.world, prepared.data
    blocks = f" ({blocks_note(model.unet, run.blocks)})" if run.blocks else ""
    sizes = run.trained_resolutions
    session.console.print(
        f"[bold]lowvram[/] {run.family.title} from {model.source} on {run.hardware.name} "
        f"({'fp32' if run.mixed_precision == 'no' else run.mixed_precision + ' mixed precision'})"
        f"{f' x {world} processes' if world > 1 else ''} | U-Net {run.unet_weights} "
        f"({storage_bytes(model.unet) / 2**20:.0f} MiB){checkpointing_note(model.unet)}, {attention} attention"
        f"{compiled_note(model.unet, schedule.batch_shapes)}, "
        f"{config.optim.optimizer} | "
        f"{len(dataset.training)} images"
        f"{' at ' + ', '.join(f'{r} px' for r in sizes) if len(sizes) > 1 else ''}, "
        f"{data.images_per_epoch} per epoch with repeats"
        f"{f', {len(prepared.validation)} for validation' if prepared.validation else ''} | "
        f"{config.network.network} rank {config.network.rank} alpha {config.alpha:g}{conv_note(config.network)}"
        f"{blocks}{', text encoder(s) too' if config.network.train_text_encoder else ''} | "
        f"{schedule.length(data.fractional)} | batch "
        f"{config.training.batch_size}{folder_batches(run)} x {config.training.gradient_accumulation}"
        f"{f' x {world}' if world > 1 else ''}", soft_wrap=True  # one line, for logs and grep
    )
    if dataset.held_out and config.validation.validation_split:  # (which ones: a resized copy of one that trains
        names = sorted(record.relpath for record in dataset.held_out)  # scores what was learnt, not what is new)
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        session.console.print(f"held out for validation (--validation-split {config.validation.validation_split:g}): "
                              f"{escape(', '.join(names[:5]))}{more}; a copy of one of them that trains (resized, "
                              "re-saved) would score what the LoRA learnt, not how it does on new images",
                              soft_wrap=True, highlight=False)
    if dataset.regularization:  # (its table shows its own samples; an epoch balances them: kohya prints its counts)
        weight = config.data.prior_loss_weight
        balance = escape(regularization_balance(data))  # (the epochs it trains; [[datasets]] not read as markup)
        idle = idle_regularization(data, weight)
        said = "[yellow]warning:[/] " if idle else "[yellow]note:[/] " if data.regularization_unused else ""
        weighs = f"their loss weighs {weight:g}{' (--prior-loss-weight)' if weight != 1 else ''}"
        tail = idle if idle and not weight else weighs + (f"; {idle}" if idle else "")  # (idle names a weight of 0)
        session.console.print(f"{said}{balance}; {escape(tail)}", soft_wrap=True)
    if short := short_run_note(config, run.family, schedule.total_steps):
        session.console.print(f"[yellow]note:[/] {escape(short)}", soft_wrap=True)
    if not config.output.name and config.output_name.lower() in FOLDER_WORDS:  # (a notebook's Loras/x/output/)
        session.console.print(f"[yellow]note:[/] the LoRA is named {escape(config.output_name)}{LORA_SUFFIX}, after "
                              "its folder; --name NAME names it (ComfyUI and AUTOMATIC1111 list LoRAs by file name)",
                              soft_wrap=True)
    warmup = schedule.warmup_steps  # (one with --scheduler constant, or idle cycles, said with the options)
    if warmup > schedule.total_steps / 2 and (config.optim.scheduler != "constant"
                                              or spec_of(config.optim.optimizer).schedule_free):
        reached = "never reaches" if warmup >= schedule.total_steps else "reaches only late"
        session.console.print(f"[yellow]warning:[/] --warmup-steps {warmup} is most of this run's {schedule.total_steps} "
                              f"steps: the learning rate {reached} --lr {config.lr:g}; lower --warmup-steps (say "
                              f"{max(0, schedule.total_steps // 10)})", soft_wrap=True)
    cycles, decaying = config.optim.scheduler_cycles, schedule.total_steps - warmup
    # (20 cycles in 10 steps: held at --lr throughout)
    if config.optim.scheduler == "cosine_with_restarts" and decaying > 0 and cycles > decaying / 2:
        session.console.print(f"[yellow]warning:[/] --scheduler-cycles {cycles} leaves each cycle under 2 of the "
                              f"{decaying} steps after the warm-up, so the rate barely decays (or not at all) before "
                              f"each restart; lower --scheduler-cycles (say {max(1, decaying // 10)})", soft_wrap=True)
    trained_alphas = {alpha for alpha, rank in zip(run.blocks.alphas, run.blocks.ranks) if rank} if run.blocks else ()
    if len(trained_alphas) > 1 and config.output.format != "diffusers":  # (a block of rank 0 has no adapters)
        session.console.print("[yellow]note:[/] --block-alphas differ between blocks: diffusers' reader of kohya files "
                              "misplaces attention layers' alphas (ComfyUI, AUTOMATIC1111 and lowvram generate read "
                              "them right); add --format diffusers for a copy diffusers reads exactly", soft_wrap=True)
    if run.hardware.fp16_fails and run.mixed_precision == "fp16":
        session.console.print(f"[yellow]warning:[/] {precision_trouble(run.mixed_precision, run.hardware)}",
                              soft_wrap=True)
    for warning in unverified_on_gpu(run, model.unet) if run.hardware.device == "cuda" else []:
        session.console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def unverified_on_gpu(run: ResolvedRun, unet: torch.nn.Module) -> list[str]:
    """What of this run no committed GPU result has shown training: the strategy, the network over a stored
    weight format, CUDA graphs."""
    config, memory = run.config, run.config.memory
    found = [unverified_warning(run.family, run.unet_weights, memory.checkpoint_blocks or memory.checkpointing,
                                config.optim.optimizer, run.mixed_precision)]
    network = config.network.network
    if network != "lora" and run.unet_weights not in ("fp32", "fp16", "bf16"):  # its layers over stored ones
        found.append(f"--network {network} over --unet-weights {run.unet_weights}: the GPU results so far train "
                     "LoRA adapters only, so this pair is unverified (the CPU checks its kernels' inputs; a GPU "
                     "result has not shown it)")
    if replaying_count(unet) and not graphs_measured(run.family):
        found.append(f"--cuda-graphs: not yet seen training {run.family.title} on a GPU (no committed result); if "
                     "a step fails, train without it")
    return [warning for warning in found if warning]
