"""The shape of the code, checked: every module sits in a layer and imports only from its own layer or below
(function-level imports included), so no import runs back up and there is no circle; and the commands that must
answer at once do not import torch or the libraries built on it."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "lowvram"
# lowest first; a module belongs to the longest entry that names it or a package above it
LAYERS = [
    ("lowvram", "lowvram.errors", "lowvram.files", "lowvram.formats", "lowvram.memory", "lowvram.prompts",
     "lowvram.option_values", "lowvram.timesteps", "lowvram.run_files", "lowvram.precision",
     "lowvram.optim", "lowvram.checkpointing", "lowvram.console", "lowvram.locks"),
    ("lowvram.config", "lowvram.adapters.blocks", "lowvram.models.families", "lowvram.lora_layout",
     "lowvram.lora_header", "lowvram.lora_metadata",
     "lowvram.kohya_values", "lowvram.kohya_network", "lowvram.kohya_optimizer",
     "lowvram.kohya_config", "lowvram.kohya_launcher",
     "lowvram.kohya_gui_config", "lowvram.other_trainers",
     "lowvram.onetrainer_optimizers", "lowvram.onetrainer_config",
     "lowvram.dataset_files", "lowvram.dataset_zip", "lowvram.output_checks", "lowvram.config_checks",
     "lowvram.run_folder_options",
     "lowvram.configure"),
    ("lowvram.hardware", "lowvram.attention", "lowvram.compiling", "lowvram.models.detect"),
    ("lowvram.resolve", "lowvram.models", "lowvram.quant", "lowvram.w8a8"),
    ("lowvram.adapters",),
    ("lowvram.data",),
    ("lowvram.plan",),
    ("lowvram.train",),
    ("lowvram.generate", "lowvram.info", "lowvram.dry_run", "lowvram.resize", "lowvram.merge", "lowvram.fuse", "lowvram.extract",
     "lowvram.doctor",
     "lowvram.caption", "lowvram.ui", "lowvram.housekeeping"),
    ("lowvram.cli", "lowvram.cli_parser", "lowvram.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of the longest name in LAYERS that is `module` or a package above it."""
    matches = [(len(name), index) for index, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name + ".")]
    assert matches, f"{module} is in no layer of tests/test_architecture.py; add it where it belongs"
    return max(matches)[1]


def imports_of(path: Path) -> set[str]:
    """The lowvram modules `path` imports anywhere in it (`from lowvram.x import y` counts lowvram.x.y when y is
    a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lowvram")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lowvram"):
            found.add(node.module)
            for alias in node.names:
                candidate = PACKAGE.parent / Path(*f"{node.module}.{alias.name}".split("."))
                if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                    found.add(f"{node.module}.{alias.name}")
    return found


GRAPH = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in GRAPH.items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if target == module or target not in GRAPH:
                continue
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [module])


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: an import from the config up into training is reported."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from lowvram.train.loop import train\n")
    assert "lowvram.train.loop" in imports_of(module)
    assert layer_of("lowvram.train.loop") > layer_of("lowvram.config")


@pytest.mark.parametrize("argv", [
    ["plan", "--model", "sd15", "--vram", "6GB"],
    ["plan", "--model", "sd15", "--vram", "6GB", "--data", "SAMPLE"],  # (which counts the run's steps too)
    ["plan", "--model", "sdxl", "--profile", "colab-t4", "--json"],
    ["check-data", "SAMPLE", "--model", "tiny"],
    ["check-data", "SAMPLE", "--model", "tiny", "--reg-data", "REG"],  # (which counts an epoch's pairs)
    ["train", "--help"],
    ["cache", "--cache-dir", "SAMPLE", "--unused-for", "30", "--dry-run"],
    ["train", "--model", "tiny", "--data", "sample", "--rank", "0"],
    ["train", "--model", "tiny", "--data", "sample", "--dry-run"],
    ["train", "--model", "tiny", "--data", "sample", "--output", "TAKEN"],  # another run's LoRA is there
])
def test_fast_commands_import_no_heavy_library(argv, sample_data, tmp_path):
    """`plan` for a card, `check-data`, help, option errors and an --output that holds another run's LoRA answer in
    a fraction of a second because they never import torch (1.5 s and more on a 2-core machine), diffusers,
    transformers, peft or accelerate."""
    shutil.copytree(sample_data, tmp_path / "reg")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "taken.safetensors").write_bytes(b"")
    argv = [{"SAMPLE": str(sample_data), "REG": str(tmp_path / "reg"), "TAKEN": str(tmp_path / "taken")}.get(a, a)
            for a in argv]
    code = ("import sys\nfrom lowvram.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate') "
            "if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr[-2000:]
