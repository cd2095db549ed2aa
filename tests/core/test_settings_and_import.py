import subprocess
import sys

import pytest

import biomed_toolkit as bt
from biomed_toolkit.core.errors import InputError


def test_import_is_light_and_offline():
    code = (
        "import sys, socket\n"
        "def refuse(*a, **k): raise RuntimeError('network call at import')\n"
        "socket.socket.connect = refuse\n"
        "import biomed_toolkit as bt\n"
        "bt.settings; bt.hub\n"
        "heavy = [m for m in ('torch', 'napari', 'plotly', 'py3Dmol', 'rdkit', 'scanpy', 'lightning') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported eagerly: {out.stdout}"


def test_settings_repr_and_validation(monkeypatch, tmp_path):
    text = repr(bt.settings)
    for key in ("device", "precision", "seed", "verbosity", "cache_dir", "offline", "progress"):
        assert key in text
    assert "auto (cpu)" in text or "auto (cuda)" in text or "auto (mps)" in text
    with pytest.raises(InputError, match="unknown device"):
        bt.settings.device = "tpu"
    monkeypatch.setenv("BIOMED_TOOLKIT_CACHE", str(tmp_path))
    assert bt.settings.cache_dir == tmp_path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert bt.settings.offline is True
    bt.settings.offline = False
    assert bt.settings.offline is False
    assert "<table>" in bt.settings._repr_html_()


def test_resolve_device_auto_and_errors():
    import torch

    from biomed_toolkit.core.device import resolve_device

    bt.settings.device = "cpu"
    assert resolve_device("auto") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_num_threads_setting_applies_to_torch():
    import torch

    before = torch.get_num_threads()
    try:
        bt.settings.num_threads = 1
        assert torch.get_num_threads() == 1
        assert "num_threads: 1" in repr(bt.settings)
        with pytest.raises(InputError, match="positive"):
            bt.settings.num_threads = 0
    finally:
        torch.set_num_threads(before)
        bt.settings.num_threads = None
