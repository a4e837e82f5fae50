"""What --compile and --cuda-graphs decide before anything compiles, on every machine (tests/test_compile.py, which
compiles, is skipped where no C++ compiler is found: a wrong check there would skip it everywhere unseen)."""

import shutil

import pytest
import torch
import torch._dynamo

from lowvram.compiling import compile_blocks, compile_problem, cuda_graphs_problem, drop_cuda_graphs, graphed_blocks
from lowvram.models.loading import load_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_cpu_compiles_with_any_cxx_compiler_and_cuda_needs_triton(monkeypatch):
    import torch.utils._triton

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/clang++" if name == "clang++" else None)
    assert compile_problem(CPU) is None  # one compiler of the four is enough
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert compile_problem(CPU) == "torch.compile needs a C++ compiler for the CPU (g++ or clang++ on the PATH)"
    no_triton = "torch.compile needs Triton for CUDA (pip install triton; on Windows, triton-windows)"
    for found, problem in ((False, no_triton), (True, None)):
        monkeypatch.setattr(torch.utils._triton, "has_triton", lambda found=found: found)
        assert compile_problem(CUDA) == problem


def test_cuda_graphs_are_offered_only_on_one_cuda_process_that_keeps_its_activations():
    assert cuda_graphs_problem(CUDA, 1, False) is None
    assert cuda_graphs_problem(CPU, 1, False) == "CUDA graphs need a CUDA device"
    assert "several processes" in cuda_graphs_problem(CUDA, 2, False)
    assert cuda_graphs_problem(CUDA, 1, True).startswith("--offload-activations")


@pytest.fixture
def dynamo_config():
    """compile_blocks sets dynamo's process-wide settings: put back after each test."""
    config = torch._dynamo.config
    names = ("suppress_errors", "recompile_limit", "accumulated_recompile_limit")
    saved = {name: getattr(config, name) for name in names}
    yield config
    for name, value in saved.items():
        setattr(config, name, value)


def test_compiling_falls_back_to_eager_and_raises_limits_never_lowers_them(dynamo_config):
    unet = load_model("tiny").unet
    dynamo_config.suppress_errors = False
    dynamo_config.recompile_limit, dynamo_config.accumulated_recompile_limit = 8, 100_000
    compile_blocks(unet, 40, cuda_graphs=True)
    assert dynamo_config.suppress_errors  # a block the compiler cannot trace runs eagerly, the run goes on
    assert dynamo_config.recompile_limit >= 3 * 40 * 2  # training, no gradients, graphs' recomputed pass; 2 widths
    assert dynamo_config.accumulated_recompile_limit == 100_000


def test_a_block_without_adapters_replays_no_graph_in_a_pass_it_takes_no_gradient_in(dynamo_config, monkeypatch):
    """A frozen block fed a tensor without gradients has no backward to come: a graph replayed there is freed by the
    next one's generation (PyTorch issue 152887). Dropping the graphs frees what they hold."""
    from torch._inductor import cudagraph_trees

    unet = load_model("tiny").unet
    frozen = unet.mid_block.attentions[0].transformer_blocks[0]
    for name, p in unet.named_parameters():
        p.requires_grad_(name.startswith("down_blocks.0."))
    compile_blocks(unet, 1, cuda_graphs=True)
    routes = {id(b): b for b in graphed_blocks(unet)}
    route = frozen._compiled_call_impl
    assert id(route) in routes and not route.trains
    hidden = torch.zeros(1, 4, 8)
    assert not route.replays(hidden) and route.replays(hidden.requires_grad_())
    reset = []
    monkeypatch.setattr(cudagraph_trees, "reset_cudagraph_trees", lambda: reset.append(True))
    drop_cuda_graphs(unet)
    assert reset == [True] and not any(b.switch.on for b in routes.values())
