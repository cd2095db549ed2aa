"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` next to the repository; tests using it skip when it is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"official fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(autouse=True)
def _quiet_progress():
    """No progress bars in test logs; settings restored after each test."""
    from biomed_toolkit.core.settings import settings

    saved = dict(vars(settings))
    settings.progress = False
    yield
    vars(settings).update(saved)
