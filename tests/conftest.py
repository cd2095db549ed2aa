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


@pytest.fixture
def bt_log(caplog: pytest.LogCaptureFixture):
    """caplog for the package logger (it does not propagate to the root logger), from INFO up."""
    import logging

    logger = logging.getLogger("biomed_toolkit")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="biomed_toolkit")
    yield caplog
    logger.removeHandler(caplog.handler)
