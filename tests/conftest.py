from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (real samples and NYU labels live there)")
    return SHARED


@pytest.fixture(scope="session")
def open_hand():
    from hand_models.model import HandModel
    return HandModel.load("open")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: one intra-op thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
