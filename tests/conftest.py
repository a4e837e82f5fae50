"""Shared fixtures. Everything runs offline on the CPU with the tiny models."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach for the Hugging Face hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Each worker, and each training process it starts, takes its share of the cores. Two processes that each
    # run OpenMP on every core spin against each other: a tiny-model step went from 0.14 s to 4.4 s here.
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import logging
import shutil
import socket
import sys
from pathlib import Path

import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from lowvram.data.sample import write_sample_dataset

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))  # the build-time tools (tools/plan_trace.py)

diffusers_logging.set_verbosity_error()
transformers_logging.set_verbosity_error()
# as the CLI does (cli._quiet_libraries): a test that builds a model before calling main() imports bitsandbytes
# first, and its hub-kernel lookup's failure landed in that test's captured stderr (failing it when run alone)
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Tests share one cache, never the user's ~/.cache/lowvram."""
    os.environ["LOWVRAM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def sample_data(tmp_path):
    return write_sample_dataset(tmp_path / "data")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def without_root_override(*dropped: str) -> list[str]:
    """The words that run a command without root's override of file permissions (setpriv: `dropped` capabilities
    too), as a user's run meets them; none for a user. Skips the test where root has no setpriv."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv to drop root's permission override")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search" + "".join(f",-{name}" for name in dropped)]


def run_config(**overrides):
    """A validated RunConfig for a short tiny-model run; keyword arguments override the defaults."""
    from lowvram.configure import build_config

    values = {"model": "tiny", "data": "sample", "max_steps": 4, "rank": 4, "overwrite": True}
    values.update(overrides)
    return build_config(values)


def pytest_runtest_logreport(report):
    """With LOWVRAM_TEST_LOG set (tools/gpu_session.sh), each failure's report is appended to it as it happens:
    pytest prints them only at its end, which a time limit may cut off."""
    path = os.environ.get("LOWVRAM_TEST_LOG")
    if path and report.failed:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext[-3000:]}\n")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests run where CUDA is, and are skipped (not failed) elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def image_folders(root: Path) -> Path:
    """alpha/ (3 captioned images), beta/ (3 without captions), reg/ (2 without) under `root`."""
    images = sorted((write_sample_dataset(root / "source") / "5_lvshape").glob("*.png"))
    for name, chosen, captions in (("alpha", images[:3], True), ("beta", images[3:], False),
                                   ("reg", images[:2], False)):
        (root / "imgs" / name).mkdir(parents=True)
        for image in chosen:
            shutil.copy(image, root / "imgs" / name)
            if captions:
                shutil.copy(image.with_suffix(".txt"), root / "imgs" / name)
    return root / "imgs"


def assert_one_line_each(message: str, prefix: str, expected: list[str]) -> None:
    """An error of one line per problem, each starting with `prefix` (the file), each fragment in exactly one."""
    lines = message.splitlines()
    assert len(lines) == len(expected) and all(line.startswith(prefix) for line in lines), lines
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)


def assert_kohya_hashes(path: Path) -> dict[str, str]:
    """That a LoRA file holds kohya's hashes of itself, computed here the ways their readers do: sshs_model_hash is
    AUTOMATIC1111's addnet hash of the file (sha256 of all after its header), sshs_legacy_hash kohya's sha256 of
    64 KiB at 1 MiB into the file the tensors and the ss_* metadata alone make. Returns the file's metadata."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file, save

    data = path.read_bytes()
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    training = save(load_file(str(path)), {key: value for key, value in metadata.items() if key.startswith("ss_")})
    assert metadata["sshs_model_hash"] == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()
    assert metadata["sshs_legacy_hash"] == hashlib.sha256(training[0x100000:0x110000]).hexdigest()[:8]
    return metadata


@pytest.fixture
def text_encoder_modes(monkeypatch):
    """The text encoders' train/eval modes at each training step's encoding, one list per step."""
    from lowvram.train import step  # where the step encodes

    modes, real = [], step.encode_prompts

    def recording(family, encoders, *args, **kwargs):
        modes.append([encoder.training for encoder in encoders])
        return real(family, encoders, *args, **kwargs)

    monkeypatch.setattr(step, "encode_prompts", recording)
    return modes
