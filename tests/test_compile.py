"""--compile (#14): the U-Net's transformer blocks compiled with torch.compile (regional), on the CPU's inductor
backend: the run trains, its LoRA reloads in diffusers and matches the eager run's, and a platform that cannot
compile trains eagerly after one line."""

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from lowvram.compiling import compile_problem
from lowvram.train.loop import train

pytestmark = pytest.mark.skipif(compile_problem(torch.device("cpu")) is not None, reason="no C++ compiler here")


def relative_difference(a: dict, b: dict) -> float:
    keys = [k for k in a if k.endswith(".weight")]
    return (sum((a[k] - b[k]).norm() ** 2 for k in keys) / sum(b[k].norm() ** 2 for k in keys)).sqrt().item()


def test_a_compiled_run_trains_reloads_and_matches_the_eager_one(tmp_path, capsys):
    """Inductor fuses and reorders float operations, so the bits differ from eager's; the LoRA (with
    checkpointing recomputing compiled blocks) stays within 2 % of the eager run's after 3 AdamW steps (measured
    0.5 %: Adam's normalized first steps magnify rounding in the smallest gradients). A compiled block that lost
    its adapters or its gradients would be off by about 100 %."""
    from lowvram.models.loading import load_model

    common = {"max_steps": 3, "rank": 4, "lr": 1e-3, "save_precision": "fp32", "seed": 7,
              "gradient_checkpointing": True, "cache_dir": str(tmp_path / "cache")}
    eager = train(run_config(output=str(tmp_path / "eager"), **common)).lora_path
    capsys.readouterr()
    compiled = train(run_config(output=str(tmp_path / "compiled"), compile=True, **common)).lora_path
    assert "blocks compiled" in " ".join(capsys.readouterr().out.split())
    difference = relative_difference(load_file(compiled), load_file(eager))
    assert difference < 0.02, difference
    fresh = load_model("tiny")
    fresh.pipeline.load_lora_weights(str(compiled), adapter_name="compiled")


def test_without_a_compiler_the_run_says_so_and_trains_eagerly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++, clang++ or cl to be found
    result = train(run_config(output=str(tmp_path / "out"), max_steps=2, compile=True))
    out = " ".join(capsys.readouterr().out.split())
    assert "--compile: torch.compile needs a C++ compiler for the CPU" in out and "training without it" in out
    assert "blocks compiled" not in out and result.lora_path.is_file()


def test_the_recompile_limit_covers_every_batch_shape_of_the_run():
    """Past dynamo's recompile limit a block runs eagerly for the rest of the run (one log line, seen on this CPU
    with a limit of 2). All transformer blocks share one code object, so the limit must cover every input shape
    the run meets, at each block width, with and without gradients; the old fixed 64 covered 10 shapes of
    SD1.5 (three widths)."""
    import torch._dynamo

    from lowvram.compiling import block_widths, compile_blocks
    from lowvram.data.augment import CaptionOptions
    from lowvram.data.dataset import Sample, TrainingData
    from lowvram.models.loading import load_model
    from lowvram.train.schedule import plan_schedule

    # 5 square images, 3 wide and 2 tall at batch 4: (4096 px, 4), (4096, 1), (2048, 3), (2048, 2)
    buckets = [(64, 64)] * 5 + [(64, 32)] * 3 + [(32, 64)] * 2
    data = TrainingData([Sample((), (), "", bucket, 1) for bucket in buckets], [], 4, 0, CaptionOptions(),
                        None, None, None)
    assert data.batch_shapes() == {(4096, 4), (4096, 1), (2048, 3), (2048, 2)}
    schedule = plan_schedule(run_config(batch_size=4, sample_prompts=["a", "b"]), data, 1)
    assert schedule.batch_shapes == 4 + 2 + 1  # and the samples' sizes, the default one included

    unet = load_model("tiny").unet
    assert block_widths(unet) == 2  # the tiny U-Net's transformer blocks come in two widths
    limits = torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit
    try:
        compile_blocks(unet, 40)
        assert torch._dynamo.config.recompile_limit >= 2 * 40 * 2
        assert torch._dynamo.config.accumulated_recompile_limit >= 2 * 40 * 2
    finally:
        torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit = limits


def test_cuda_graph_blocks_replay_only_training_passes_outside_recomputed_units():
    """--cuda-graphs' routing, on the tiny U-Net's blocks as compile_blocks sets them up: a training pass replays
    graphs in every block outside a recomputed unit. A pass without gradients, and the blocks of a unit that
    checkpointing recomputes (PyTorch issue 154306), run the compiled code without graphs; once an out-of-memory
    has dropped the graphs (its first lever, before checkpointing), no block replays them. The routed U-Net's
    output and gradients are the eager one's, bit for bit. The compiled functions run eagerly here
    (torch.compiler.set_stance): the CPU has no graphs to replay, and inductor's cold compile of every pass took
    84 s on this 2-core machine; the GPU test of --cuda-graphs replays them."""
    import copy

    from lowvram.adapters.networks import add_adapter
    from lowvram.checkpointing import checkpoint_units, enable_checkpointing
    from lowvram.compiling import compile_blocks, graphed_blocks, replaying_count
    from lowvram.models.loading import load_model
    from lowvram.train.step import leaner_after_oom

    model = load_model("tiny")
    unet = model.unet.float()
    add_adapter(unet, model.family.lora_targets("unet"), 4, 4, 0.0)
    for p in unet.parameters():  # LoRA's B starts at zero; nonzero B gives A gradients too
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    recomputed = next(name for name, unit in checkpoint_units(unet).items() if hasattr(unit, "transformer_blocks"))
    enable_checkpointing(unet, [recomputed])
    eager = copy.deepcopy(unet)
    compile_blocks(unet, 1, cuda_graphs=True)
    blocks = graphed_blocks(unet)
    inside = {id(b) for b in blocks if b.unit is unet.get_submodule(recomputed)}
    assert blocks and inside and len(inside) < len(blocks)
    assert replaying_count(unet) == len(blocks) - len(inside)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    timesteps = torch.tensor([100, 700])

    def calls() -> dict[int, tuple[int, int]]:
        return {id(b): (b.calls["graphs"], b.calls["plain"]) for b in blocks}

    def training_pass(net) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = net(latents, timesteps, hidden).sample
        out.square().mean().backward()
        grads = [p.grad.clone() for p in net.parameters() if p.requires_grad]
        net.zero_grad(set_to_none=True)
        return out.detach(), grads

    with torch.compiler.set_stance("force_eager"):
        out, grads = training_pass(unet)  # a recomputed block runs again in backward
        assert calls() == {key: (0, 2) if key in inside else (1, 0) for key in calls()}
        want, want_grads = training_pass(eager)
        assert torch.equal(out, want) and all(map(torch.equal, grads, want_grads))

        with torch.no_grad():
            unet(latents, timesteps, hidden)
        assert calls() == {key: (0, 3) if key in inside else (1, 1) for key in calls()}

        assert leaner_after_oom(unet, 1, 2) == ("stopped replaying CUDA graphs (the blocks stay compiled)", 1)
        training_pass(unet)
        assert replaying_count(unet) == 0
        assert calls() == {key: (0, 5) if key in inside else (1, 2) for key in calls()}


def test_cuda_graphs_off_a_cuda_device_say_so_and_the_run_compiles_without_them(tmp_path, capsys):
    # the blocks of the compiled run above (checkpointed, rank 4): inductor's cache has them
    result = train(run_config(output=str(tmp_path / "out"), max_steps=2, compile=True, cuda_graphs=True,
                              gradient_checkpointing=True))
    out = " ".join(capsys.readouterr().out.split())
    assert "--cuda-graphs: CUDA graphs need a CUDA device; compiling without them" in out
    assert "blocks compiled" in out and "replay CUDA graphs" not in out and result.lora_path.is_file()


def test_cuda_graphs_without_compile_are_refused():
    from lowvram.configure import build_config
    from lowvram.errors import LowvramError

    with pytest.raises(LowvramError, match="--cuda-graphs: replays the compiled blocks; add --compile"):
        build_config({"model": "tiny", "data": "sample", "cuda_graphs": True})
