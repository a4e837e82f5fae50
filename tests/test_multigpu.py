"""Multi-GPU through `accelerate launch` (DDP), exercised on the CPU with two processes and the gloo backend:
both ranks finish, the main process alone writes the LoRA, and every rank ends with the same weights."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

RANK_SCRIPT = """
import json, sys
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from lowvram.configure import build_config
from lowvram.train.loop import train

out = sys.argv[1]
options = {{"model": "tiny", "data": "sample", "output": out, "max_steps": 4, "rank": 4,
           "lr": 1e-2, "batch_size": 2, "save_precision": "fp32", "checkpoint_every": 2,
           "validation_split": 0.34, "validate_every": 2, "cache_dir": {cache!r}}}
options.update(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {{}})
result = train(build_config({{k: v for k, v in options.items() if v is not None}}))  # None: drop that option
from accelerate import PartialState
state = PartialState()
weights = {{k: v.contiguous() for k, v in get_peft_model_state_dict(result.model.unet).items()}}
save_file(weights, f"{{out}}/rank{{state.process_index}}-of-{{state.num_processes}}.safetensors")
import torch, torch.distributed as dist
waits = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu")).options._timeout
print(f"rank {{state.process_index}} finished at step {{result.steps}}, waiting up to {{waits}}", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, out, options: dict | None = None) -> subprocess.CompletedProcess:
    """The rank script under `accelerate launch` with two CPU processes (gloo)."""
    script = tmp_path / "train_rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(cache=str(tmp_path / "cache"))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), str(script), str(out), json.dumps(options or {})],
        check=False, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_two_processes_train_one_lora_with_identical_weights(tmp_path):
    out = tmp_path / "out"
    run = launch(tmp_path, out, {"scheduler": "linear"})
    assert "rank 0 finished at step 4" in run.stdout and "rank 1 finished at step 4" in run.stdout
    assert "x 2 processes" in run.stdout  # the run knew it was distributed
    # the others wait for the main process filling the caches for hours, not torch's 30 minutes
    assert "waiting up to 3:00:00" in run.stdout

    ranks = [load_file(out / f"rank{r}-of-2.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert any(t.abs().sum() > 0 for k, t in ranks[0].items() if "lora_B" in k)  # it trained
    written = sorted(p.name for p in out.glob("*.safetensors") if not p.name.startswith("rank"))
    assert written == ["out-best.safetensors", "out.safetensors"]  # one LoRA (and the best), from one process
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    saved = load_file(out / "out.safetensors")
    assert len(saved) == 3 * len([k for k in ranks[0] if "lora_A" in k])  # down, up and alpha per module
    metadata = safe_open(str(out / "out.safetensors"), "pt").metadata()  # a step's images, as kohya counts them:
    assert int(metadata["ss_total_batch_size"]) == 2 * int(metadata["ss_batch_size_per_device"]) * int(
        metadata["ss_gradient_accumulation_steps"])  # every process's batches
    # the schedule runs over the run's steps, not steps / processes (accelerate's scheduler wrapper steps it once
    # per process): linear decay from 1e-2 over 4 steps leaves 3/4 of it for the second
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    assert lrs[2] == pytest.approx(0.75e-2) and lrs[4] == pytest.approx(0.25e-2)


@pytest.mark.slow
def test_two_processes_resume_each_rank_with_its_own_random_state(tmp_path):
    """A two-process run interrupted at a checkpoint and resumed ends with the LoRA an uninterrupted run makes:
    each rank continues its own noise (rank 0's state restored on both would correlate them)."""
    constant = {"validation_split": None, "validate_every": None, "checkpoint_every": 2}
    launch(tmp_path, tmp_path / "whole", constant)
    launch(tmp_path, tmp_path / "cut", {**constant, "max_steps": 2})
    alone = subprocess.run([sys.executable, str(tmp_path / "train_rank.py"), str(tmp_path / "cut"),
                            json.dumps({**constant, "resume": "auto"})], check=False, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert alone.returncode != 0  # one process would continue another run: another batch, one random state
    assert ("was saved by a run of 2 process(es), this one has 1; resume it with as many (accelerate launch "
            "--multi_gpu --num_processes 2 -m lowvram train)") in alone.stderr, alone.stderr[-2000:]
    launch(tmp_path, tmp_path / "cut", {**constant, "resume": "auto", "overwrite": True})
    whole, resumed = (load_file(tmp_path / name / f"{name}.safetensors") for name in ("whole", "cut"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_two_processes_freeze_the_text_encoders_where_asked_and_stay_in_step(tmp_path):
    """--text-encoder-until under DDP: past it every rank runs the wrapped encoders without gradients, so their
    reducers wait for nothing, and the run ends on every rank with the same weights; the encoders' adapters keep
    their step-2 weights (--save-every writes each step's LoRA)."""
    out = tmp_path / "out"
    run = launch(tmp_path, out, {"train_text_encoder": True, "text_encoder_until": "2", "save_every": "1",
                                 "validation_split": None, "validate_every": None, "checkpoint_every": None})
    assert "rank 0 finished at step 4" in run.stdout and "rank 1 finished at step 4" in run.stdout
    assert "frozen from step 3 on" in " ".join(run.stdout.split())
    ranks = [load_file(out / f"rank{r}-of-2.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    step2, step3, final = (load_file(out / name) for name in ("out-step00000002.safetensors",
                                                              "out-step00000003.safetensors", "out.safetensors"))
    text = [k for k in final if k.startswith("lora_te") and "alpha" not in k]
    assert text and all(torch.equal(step2[k], final[k]) for k in text)  # frozen after step 2
    assert any(not torch.equal(step3[k], final[k]) for k in final if k.startswith("lora_unet_"))  # the U-Net trains on


@pytest.mark.slow
def test_a_process_killed_mid_run_ends_the_other_with_the_checkpoint_and_the_launch_that_continues(tmp_path):
    """One rank SIGKILLed (the kernel's out-of-memory kill on its GPU) after the first checkpoint: the main process
    says so in a line, naming the checkpoint and the accelerate launch that resumes it (it ended in gloo's traceback,
    "Connection closed by peer", with no way on)."""
    import psutil

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m",
         "lowvram", "train", "--model", "tiny", "--data", "sample", "--resolution", "64", "--max-steps", "400",
         "--checkpoint-every", "1", "--output", str(out), "--cache-dir", str(tmp_path / "cache")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not any((out / "checkpoints").glob("step-*/state.json")):  # (step 1's is pruned as others come)
            assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
            time.sleep(0.5)
        ranks = {child.environ().get("RANK"): child for child in psutil.Process(launcher.pid).children(recursive=True)
                 if "RANK" in child.environ()}
        ranks["1"].kill()
        _, err = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    # (which comes first is a race: gloo's closed connection, or the launcher's SIGTERM to the process left)
    said = [line for line in err.splitlines() if line.startswith(("lowvram train: error: lost contact",
                                                                  "lowvram train: interrupted"))]
    assert len(said) == 1, err[-3000:]
    assert re.search(r"(and this one ended with it|interrupted); kept: checkpoint step-\d{6}; continue with: accelerate "
                     r"launch --multi_gpu --num_processes 2 -m lowvram train --config \S+out\.toml --resume auto$",
                     said[0]), said


@pytest.mark.slow
def test_a_refusal_every_process_reaches_is_said_once(tmp_path):
    """An output folder of another run, refused by the claim every process makes alike: one line, not one for each
    process (and the CPU's --auto note once too)."""
    from conftest import run_config

    from lowvram.train.loop import train

    out = tmp_path / "out"
    train(run_config(output=str(out), max_steps=1, resolution=64))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m",
         "lowvram", "train", "--model", "tiny", "--data", "sample", "--resolution", "64", "--max-steps", "2",
         "--lr", "3e-4", "--auto", "--resume", "auto", "--output", str(out)],
        check=False, capture_output=True, text=True, env=env, timeout=600)
    said = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("lowvram train:")]
    assert run.returncode != 0 and len([line for line in said if "error:" in line]) == 1, said
    assert len([line for line in said if "--auto: no CUDA GPU" in line]) == 1, said


@pytest.mark.slow
def test_an_output_folder_held_by_another_run_is_refused_by_every_process(tmp_path):
    """The main process refused a busy --output (exit 75) before the process group formed; the other waited to join
    it until the launcher killed it 30 s later (SIGKILL, a traceback): every process now looks, and each ends 75."""
    from lowvram.train.folder_lock import FolderLock

    out = tmp_path / "out"
    out.mkdir()
    held = FolderLock(out)  # (this process stands for the run that holds the folder)
    held.acquire()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    try:
        run = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
             str(free_port()), "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--max-steps", "2",
             "--output", str(out), "--cache-dir", str(tmp_path / "cache")],
            check=False, capture_output=True, text=True, env=env, timeout=600)
    finally:
        held.release()
    codes = re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", run.stderr, re.MULTILINE)  # (the launcher's report)
    # (the other one may be ended by the launcher's SIGTERM first, which a process still loading takes at once)
    assert run.returncode != 0 and "75" in codes and "-9" not in codes, run.stderr[-3000:]
    assert len([line for line in run.stderr.splitlines() if "is in use by another lowvram run" in line]) == 1


def test_a_process_of_a_launch_takes_the_lock_its_own_main_process_holds_for_its_own(tmp_path, monkeypatch):
    """On GPUs (NCCL connects lazily) the main process may take the folder's lock before another process of the
    same launch looked at it: that one refused the run as 'in use by another lowvram run', naming its main process."""
    from lowvram.train.folder_lock import FolderLock

    launch = {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    held = FolderLock(tmp_path)  # (this process stands for the launch's main process)
    held.acquire()
    look = "from pathlib import Path; from lowvram.train.folder_lock import FolderLock; import sys; " \
           "print(FolderLock(Path(sys.argv[1])).held_by_another())"
    try:
        for port, busy in (("29500", False), ("29501", True)):  # (the same launch; another launch's process)
            env = {**os.environ, "MASTER_PORT": port, "RANK": "1"}
            said = subprocess.run([sys.executable, "-c", look, str(tmp_path)], capture_output=True, text=True,
                                  env=env, check=True).stdout.strip()
            assert ("is in use by another lowvram run" in said) is busy, said
    finally:
        held.release()
    # another machine's launch of accelerate's defaults (the same none:127.0.0.1:29500) on a shared disk is another
    # run: its lock was taken over as this launch's own
    lock = tmp_path / ".lowvram.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "node-b", "refreshed": True, "since": "now",
                                "launch": "none:127.0.0.1:29500"}))
    env = {**os.environ, "RANK": "1"}
    said = subprocess.run([sys.executable, "-c", look, str(tmp_path)], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()
    assert "is in use by another lowvram run (pid 1 on node-b" in said, said
