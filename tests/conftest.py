"""Shared fixtures: one session-scoped local Ray (real, on loopback) for every test that needs Ray."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Triton kernels run through the interpreter on CPU, checked against their torch references. Triton decides
# this when a kernel is decorated, so it must be set before anything imports `kernels`.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
sys.path.insert(0, str(REPO))
import cluster  # noqa: E402,F401 - before ray is imported: loopback-only local Ray
# Tests run on CPU; a quiet Ray keeps CI logs readable.
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_session():
    import cluster

    info = cluster.connect()
    yield info
    cluster.shutdown()


@pytest.fixture(scope="session")
def data_root() -> Path:
    import cluster

    return cluster.data_root()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the registry, imported once for the session (fp32: the parity reference)."""
    from actors.model.registry import import_model

    name = "smollm2-135m-instruct"
    return import_model(name, tmp_path_factory.mktemp("models") / f"{name}-float32")


@pytest.fixture(scope="session")
def debug_smollm2(smollm2, tmp_path_factory) -> Path:
    """The debug shape (random init, seed 0) with SmolLM2's real tokenizer and chat template, as an HF folder:
    fast to train and score, loadable by `transformers`, peft and lm-eval. Tests only read it."""
    import torch

    from actors.model import Transformer, get_config, save_hf
    from actors.model.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2)
    torch.manual_seed(0)
    cfg = get_config("debug", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_hf(Transformer(cfg), tmp_path_factory.mktemp("debug-smollm2") / "hf", tokenizer_dir=smollm2)
