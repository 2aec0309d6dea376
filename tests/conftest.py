"""Shared fixtures: the network cut off, tiny real checkpoints on disk, a real studio server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# No hub, ever: offline mode, and an endpoint that refuses at once if anything still tries.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_ENDPOINT": "http://127.0.0.1:9", "GRADIO_ANALYTICS_ENABLED": "False",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
os.environ.update(OFFLINE_ENV)


def _guard_network() -> None:
    """Any connection to a non-loopback address fails in this process (a hub call would)."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")
                                          or self.family == socket.AF_UNIX):
            raise OSError(f"network disabled in tests (tried {address!r})")
        return real(self, address)

    socket.socket.connect = connect


_guard_network()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data dir holding tiny random-weight checkpoints of each family in the A1111 single-file layout."""
    from checkpoint_factory import make_tiny_checkpoint

    d = tmp_path_factory.mktemp("studio-data")
    sd = d / "models" / "Stable-diffusion"
    make_tiny_checkpoint(sd / "tiny-sd1.safetensors", "sd1", seed=1)
    make_tiny_checkpoint(sd / "v2" / "tiny-sd2v.safetensors", "sd2-v", seed=2)
    make_tiny_checkpoint(sd / "tiny-sdxl.safetensors", "sdxl", seed=3)
    make_tiny_checkpoint(sd / "tiny-sd1-pickle.ckpt", "sd1", seed=4, fmt="ckpt")
    good = (sd / "tiny-sd1.safetensors").read_bytes()
    (sd / "broken-truncated.safetensors").write_bytes(good[: len(good) // 2])
    import torch
    from safetensors.torch import save_file
    # a LoRA-like file dropped into the wrong folder: readable, but not a checkpoint
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
              str(sd / "not-a-model.safetensors"))
    return d


def start_server(data: Path, *extra: str, timeout: float = 240.0):
    port = free_port()
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    log = open(data / f"server-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--data-dir", str(data),
                             "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(data / f'server-{port}.log').read_text()[-3000:]}")
        if "Running on local URL" in (data / f"server-{port}.log").read_text():
            return proc, url
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in time")


@pytest.fixture(scope="session")
def server(data_dir):
    proc, url = start_server(data_dir)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def engine(data_dir):
    """An in-process engine over the same data dir (for tests that need the objects, not HTTP)."""
    from app import build_engine
    from webui.config.flags import parse_args

    return build_engine(parse_args(["--data-dir", str(data_dir)]))
