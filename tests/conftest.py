from pathlib import Path

import pytest

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
