"""The public ``bt.mammal`` surface and its lazy import."""

from __future__ import annotations

import subprocess
import sys

PUBLIC = ["load", "Tokenizer", "prompts", "predict", "virtual_screen", "TASKS", "MammalConfig", "MammalModel",
          "finetune", "kiba", "esol"]


def test_public_names_resolve():
    import biomed_toolkit.mammal as mm

    for name in PUBLIC:
        assert getattr(mm, name) is not None, name
    assert set(PUBLIC) <= set(dir(mm))


def test_import_is_light():
    code = "import sys, biomed_toolkit.mammal as mm; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_unknown_attribute_error():
    import pytest

    import biomed_toolkit.mammal as mm

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mm.nope  # noqa: B018
