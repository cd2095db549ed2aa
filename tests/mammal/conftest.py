"""Fixtures of the MAMMAL tests: the official tiny checkpoint and its expected outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mammal_fixture(fixtures_dir: Path) -> Path:
    folder = fixtures_dir / "mammal_official_tiny"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture(scope="session")
def cases(mammal_fixture: Path) -> list[dict]:
    return json.loads((mammal_fixture / "cases.json").read_text())["cases"]


@pytest.fixture(scope="session")
def expected(mammal_fixture: Path) -> dict[str, np.ndarray]:
    with np.load(mammal_fixture / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def official_tokenizer(mammal_fixture: Path):
    from biomed_toolkit.mammal import Tokenizer

    return Tokenizer.from_pretrained(mammal_fixture / "tokenizer")


@pytest.fixture(scope="session")
def tiny_model(mammal_fixture: Path):
    import torch

    from biomed_toolkit.mammal import load

    torch.manual_seed(0)
    return load(mammal_fixture / "model", device="cpu")
