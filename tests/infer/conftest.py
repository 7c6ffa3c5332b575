"""Fixtures for the inference tests: a tiny random Llava checkpoint, engines over it, a live server.

`engine` is the plain random model: answers are random text, fine for equivalences (token ids are
compared). `sharp_engine` is the same checkpoint with its attention sharpened (query/key weights
x8), its projector outputs amplified (x20) and its logits scaled (x3): answers then depend on the
image and tokens attend to few positions — a model on which VCD and OPERA visibly change answers.
`sharp_checkpoint` is that model saved as a checkpoint, for the command-line tests.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from infer_fixtures import API_KEY, MODEL_NAME, SERVER_LIMITS, square_image


@pytest.fixture(scope="session")
def engine(tiny_checkpoint):
    from crystalvlm.infer.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4)


def sharpen(model) -> None:
    """Attention sharpened (query/key x8), projector outputs amplified (x20), logits scaled (x3)."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        model.model.multi_modal_projector.linear_2.weight.mul_(20)
        model.lm_head.weight.mul_(3)


@pytest.fixture(scope="session")
def sharp_engine(tiny_checkpoint):
    from crystalvlm.infer.engine import GenerationEngine

    sharp = GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4)
    sharpen(sharp.model)
    return sharp


@pytest.fixture(scope="session")
def sharp_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The sharp model saved as a checkpoint (for the command line): its answers are `sharp_engine`'s."""
    from crystalvlm.models.checkpoint import load_checkpoint, save_checkpoint

    model, processor, info = load_checkpoint(tiny_checkpoint)
    sharpen(model)
    folder = tmp_path_factory.mktemp("sharp_llava") / "checkpoint"
    save_checkpoint(model, processor, folder, info)
    return folder


@pytest.fixture(scope="session")
def mixed_requests():
    """Prompts of different lengths, with and without images (one with two images)."""
    from crystalvlm.data.templates import Turn
    from crystalvlm.infer.engine import GenerationRequest

    return [
        GenerationRequest([Turn("user", "<image>\nWhat colour is the square?")], [square_image("red")]),
        GenerationRequest([Turn("user", "Name a colour.")]),
        GenerationRequest([Turn("user", "<image>\nDescribe the image briefly. Answer the question using a single word or phrase.")],
                          [square_image("blue", (30, 60))]),
        GenerationRequest([Turn("user", "Is it a square? Describe the image briefly, then name a colour.")]),
        GenerationRequest([Turn("user", "<image>\n<image>\nWhich is green?")], [square_image("green"), square_image("yellow")]),
        GenerationRequest([Turn("user", "<image>\nIs it a square?"), Turn("assistant", "Yes"), Turn("user", "What colour?")],
                          [square_image("yellow", (64, 20))]),
    ]


# ---------------------------------------------------------------------------- a live server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def server_engine(tiny_checkpoint):
    from crystalvlm.infer.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=8)


@pytest.fixture(scope="session")
def live_server(server_engine):
    """The app under uvicorn on 127.0.0.1 in a background thread; yields its base URL."""
    import uvicorn

    from crystalvlm.infer.openai_protocol import ServerLimits
    from crystalvlm.infer.server import build_app

    app = build_app(server_engine, MODEL_NAME, api_key=API_KEY, limits=ServerLimits(**SERVER_LIMITS))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "app": app}
    server.should_exit = True
    thread.join(timeout=10)
