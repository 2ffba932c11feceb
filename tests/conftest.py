import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import socket
import sys
from pathlib import Path

import pytest
import torch

# scripts/ holds tools that do not ship in the package (the course renderer, scripts/render_course.py);
# tests import them by name
sys.path.append(str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run faster on one thread, and do not stall when other jobs share the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def lora_unet():
    """A tiny SD UNet, frozen, with a rank-4 peft LoRA on every attention projection (seeded init)."""
    import peft

    from smoothlib.testing import tiny_unet

    unet = tiny_unet(sample_size=8)
    unet.requires_grad_(False)
    torch.manual_seed(0)  # the LoRA's gaussian init draws from the global generator
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return unet


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a socket connection, and check afterwards that none was made."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"test forbids network access (tried {address})")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert not attempts, f"network was tried: {attempts}"


@pytest.fixture(scope="session")
def captioned_rgb_folder(tmp_path_factory):
    """Four random 16x16 RGB images with a metadata.jsonl caption file: the trainer's input format."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("captioned")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f"{i}.png", "text": f"image {i}"})
                                                   for i in range(4)))
    return str(root)
