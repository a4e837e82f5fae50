"""The Colab notebook (notebooks/lowvram_colab.ipynb) runs top to bottom with the tiny model on the CPU, and after a
disconnect in the middle of training, running it again resumes from the checkpoint it left on "Drive"."""

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import ipykernel.kernelspec
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from PIL import Image
from safetensors import safe_open

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "lowvram_colab.ipynb"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes, should rich emit any
IMAGES, REPEATS, EPOCHS = 4, 2, 2
TRAINING_CELLS = ("settings", "install", "drive", "train")  # what decides and runs the training, without the checks
STEPS = IMAGES * REPEATS * EPOCHS  # batch 1


def cell(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def text(code_cell):
    """A code cell's printed output, control codes removed and whitespace collapsed."""
    streams = "".join(o.get("text", "") for o in code_cell.outputs if o.output_type == "stream")
    return " ".join(ANSI.sub("", streams).split())


def unwrapped(code_cell):
    """A code cell's printed output without any whitespace: rich wraps a long path wherever the line ends."""
    return "".join(text(code_cell).split())


def lora_metadata(path):
    with safe_open(str(path), "pt") as lora:
        return lora.metadata()


def client_for(nb, workdir):
    return NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})


def run_cells(client, nb, cell_ids):
    """Run only the cells named, in the notebook's order, in a fresh kernel."""
    with client.setup_kernel():
        for index, code_cell in enumerate(nb.cells):
            if code_cell.get("id") in cell_ids:
                client.execute_cell(code_cell, index)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A kernel on this interpreter, a dataset, and the settings pointing at them; returns the output folder."""
    # The kernel must be this venv's Python (with this lowvram). The "python3" spec nbclient asks for is looked
    # up in JUPYTER_PATH before the user's and the system's folders, where another Python's spec may be found.
    prefix = tmp_path / "jupyter-prefix"
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    ipykernel.kernelspec.install(kernel_name="python3", prefix=str(prefix))  # argv: [sys.executable, ...]
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))  # connection files
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable

    data = tmp_path / "drive" / "dataset" / f"{REPEATS}_lvshape"  # kohya layout: each image counts REPEATS times
    data.mkdir(parents=True)
    for i, colour in enumerate(["red", "green", "blue", "yellow"][:IMAGES]):
        Image.new("RGB", (96, 80), colour).save(data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text(f"a {colour} square\n")
    output = tmp_path / "drive" / "runs" / "shapes"
    # uploaded as one zip of the folder itself (Windows' "Compressed folder"), as Colab users often do: the notebook
    # unpacks it beside itself, once
    archive = shutil.make_archive(str(data.parent), "zip", data.parent.parent, data.parent.name)
    shutil.rmtree(data.parent)

    # The kernel, and the lowvram commands it runs, inherit this environment.
    settings = {"MODEL": "tiny", "DATA": archive, "OUTPUT": output, "EPOCHS": EPOCHS, "CHECKPOINT_EVERY": 2,
                "SAMPLE_PROMPT": "ohwx, a red square"}
    for name, value in settings.items():
        monkeypatch.setenv(f"LOWVRAM_NB_{name}", str(value))
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU path, even where a GPU is
    # The tiny model's operations are too small to share between threads: more threads only fight over the CPU,
    # and where other tests run alongside, each step gets many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return output


def test_the_notebook_is_valid_and_saved_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert "parameters" in cell(nb, "settings").metadata.get("tags", [])
    for code_cell in (c for c in nb.cells if c.cell_type == "code"):
        assert code_cell.outputs == [] and code_cell.execution_count is None, f"cell {code_cell.id}: clear outputs"


@pytest.mark.slow
def test_the_notebook_trains_and_resumes_after_a_disconnect(run_dir, tmp_path):
    checkpoints = run_dir / "checkpoints"
    lora = run_dir / "shapes.safetensors"

    # First session: Colab disconnects during training. A disconnect kills the runtime, the kernel and the
    # training process with it, without warning: SIGKILL to the kernel's process group (jupyter_client starts the
    # kernel in a session of its own, and the lowvram process it runs belongs to it). The checks before training
    # (doctor, check-data, plan) write nothing to OUTPUT, so this session skips them; the next one runs them.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = client_for(nb, tmp_path)
    stop_watching, killed = threading.Event(), []

    def disconnect_after_the_first_checkpoint():
        while not (checkpoints / "step-000002").is_dir():
            if stop_watching.wait(0.02):
                return
        pgid = client.km.provisioner.pgid
        if pgid is not None and pgid != os.getpgrp():  # never this test's own group
            os.killpg(pgid, signal.SIGKILL)
            killed.append(pgid)

    watcher = threading.Thread(target=disconnect_after_the_first_checkpoint, daemon=True)
    watcher.start()
    try:
        with contextlib.suppress(DeadKernelError):  # what nbclient raises when the kernel dies mid-cell
            run_cells(client, nb, TRAINING_CELLS)
    finally:
        stop_watching.set()
        watcher.join()
    assert killed, "training ended before the simulated disconnect"
    assert "$ lowvram train --auto" in text(cell(nb, "train"))  # a new run
    assert not lora.exists()
    survived = sorted(p.name for p in checkpoints.glob("step-*"))
    assert survived and survived[-1] < f"step-{STEPS:06d}"
    # the reconnected runtime is another machine, to which the dead run's lock on Drive is minutes old; Drive
    # keeps a conflicting copy of a checkpoint folder beside it
    lock = run_dir / ".lowvram.lock"
    lock.write_text(json.dumps(json.loads(lock.read_text()) | {"host": "8f2c1a9b7d3e"}))
    stale = time.time() - 600
    os.utime(lock, (stale, stale))
    (checkpoints / f"{survived[-1]} (1)").mkdir()

    # Second session: the same notebook, run again unchanged, continues from the newest checkpoint and finishes.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client_for(nb, tmp_path).execute()  # raises CellExecutionError on the first cell that fails
    for code_cell in (c for c in nb.cells if c.cell_type == "code"):
        assert code_cell.execution_count is not None, code_cell.id
        assert not [o for o in code_cell.outputs if o.output_type == "error"], code_cell.id
    assert f"Python: {sys.executable}" in text(cell(nb, "install"))
    plan = text(cell(nb, "plan"))  # the plan, for a Colab T4 as there is no GPU: a choice, or (until a GPU result
    assert "candidate strategies" in plan and ("chose " in plan or "would fit with: --unet-weights" in plan)  # has
    # shown fp16 training) the strategy that would run and its flags
    newest = int(survived[-1].removeprefix("step-"))
    assert f"holds a checkpoint at step {newest}: resuming the run from it" in text(cell(nb, "train"))
    assert f"resumedfrom{checkpoints}/{survived[-1]}atstep{newest}" in unwrapped(cell(nb, "train"))
    assert lora.is_file() and int(lora_metadata(lora)["ss_steps"]) == STEPS
    steps = {json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert steps == set(range(1, STEPS + 1))
    for shown in ("results", "generate"):  # the sample image, then the two generated ones
        images = [o for o in cell(nb, shown).outputs if "image/png" in o.get("data", {})]
        assert len(images) == (1 if shown == "results" else 2), shown
    assert len(list((run_dir / "generated").glob("image-*.png"))) == 2

    # A later session, with the run finished, trains nothing and leaves the LoRA as it is.
    written = lora.stat().st_mtime_ns
    nb = nbformat.read(NOTEBOOK, as_version=4)
    run_cells(client_for(nb, tmp_path), nb, TRAINING_CELLS)
    assert "is finished" in text(cell(nb, "train")) and "$ lowvram train" not in text(cell(nb, "train"))
    assert lora.stat().st_mtime_ns == written
