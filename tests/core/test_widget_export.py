"""Widget exports (`core.widgets.write_csv`): a reader never finds a half-written file, and a
failed export leaves the previous file as it was."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from biomed_toolkit.core.widgets import write_csv


def test_write_csv_round_trips_and_creates_the_folder(tmp_path):
    frame = pd.DataFrame({"row": [3, 1, 2], "smiles": ["CCO", "CCN", "c1ccccc1O"]})
    path = write_csv(frame, tmp_path / "new" / "selection.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), frame)
    assert [p.name for p in path.parent.iterdir()] == ["selection.csv"]  # no temporary left


def test_failed_export_keeps_the_previous_file(tmp_path):
    path = write_csv(pd.DataFrame({"row": [1]}), tmp_path / "selection.csv")
    before = path.read_bytes()

    class Unwritable(pd.DataFrame):
        def to_csv(self, target, **kwargs):  # writes half, then fails
            Path(target).write_text("row\n")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_csv(Unwritable({"row": [5, 6]}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["selection.csv"]
