"""Screens from files: chunked Parquet output, SIGKILL halfway then resume; 2 CPU processes == 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.script_job import REPO, run_script

TARGET = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWUAGSTLWNTLSS".replace("U", "A")


def _library(path: Path, n: int) -> list[str]:
    from biomed_toolkit.mammal.datasets import esol

    smiles = esol().smiles.tolist()
    lib = [smiles[i % len(smiles)] for i in range(n)]
    lib[7] = "C1CC"  # one invalid molecule: an error row, the screen goes on
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(lib)))
    return lib


SCREEN = """
import json, sys, torch
torch.set_num_threads(1)
import biomed_toolkit as bt
bt.settings.progress = False
model = bt.mammal.load(device="cpu")
res = bt.mammal.screen_file(model, sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=int(sys.argv[4]),
                            batch_size=32)
print(json.dumps({"computed": res.computed_chunks, "n": res.n_molecules, "chunks": res.n_chunks}))
"""


@pytest.mark.slow
def test_sigkill_halfway_then_rerun_skips_finished_chunks(tmp_path):
    lib = _library(tmp_path / "lib.smi", 240)
    out = tmp_path / "out"
    script = tmp_path / "screen.py"
    script.write_text(textwrap.dedent(SCREEN))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(script), TARGET, str(tmp_path / "lib.smi"), str(out), "20"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while len(list(out.glob("part-*.parquet"))) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 4 <= len(done) < 12, f"kill came too late or too early: {sorted(done)}"
    rerun = run_script(SCREEN, tmp_path / "rerun", args=args[2:], timeout=900)
    assert rerun["chunks"] == 12 and rerun["n"] == 240
    finished = sorted(int(n.split("-")[1].split(".")[0]) for n in done)
    assert not set(rerun["computed"]) & set(finished)  # finished chunks were not recomputed
    assert sorted(rerun["computed"] + finished) == list(range(12))
    for name, mtime in done.items():
        assert (out / name).stat().st_mtime_ns == mtime, name
    # Same scores as scoring the whole library in one call.
    import biomed_toolkit as bt

    got = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)
    assert got["row"].tolist() == list(range(240)) and got["smiles"].tolist() == lib
    assert got.loc[7, "error"] and np.isnan(got.loc[7, "prediction"])
    model = bt.mammal.load(device="cpu")
    ref = bt.mammal.predict(model, "dti", {"protein": [TARGET] * 240, "smiles": lib}, progress=False)
    np.testing.assert_allclose(got["prediction"], ref["prediction"].astype(np.float32), rtol=1e-5, atol=1e-5)
    res = bt.mammal.ScreenResult(out, 240, 12, [])
    top = res.top(5)
    assert top["prediction"].is_monotonic_decreasing and top["prediction"].iloc[0] == np.nanmax(got["prediction"])


TWO = """
import json, sys, torch
torch.set_num_threads(1)
import biomed_toolkit as bt
bt.settings.progress = False
model = bt.mammal.load(device="cpu")
smiles = bt.mammal.esol().smiles.tolist()[:48] + ["C1CC"]
one = bt.mammal.predict(model, "dti", {"protein": [sys.argv[1]] * len(smiles), "smiles": smiles}, progress=False)
two = bt.mammal.predict(model, "dti", {"protein": [sys.argv[1]] * len(smiles), "smiles": smiles}, progress=False,
                        accelerator="cpu", devices=2, batch_size=8)
from tests.script_job import emit_json  # both ranks print: one atomic line each
emit_json({"one": [round(v, 6) for v in one.prediction.fillna(-99).tolist()],
           "two": [round(v, 6) for v in two.prediction.fillna(-99).tolist()],
           "err_one": one.error.notna().tolist(), "err_two": two.error.notna().tolist()})
"""


@pytest.mark.slow
def test_two_cpu_processes_give_the_same_scores_as_one(tmp_path):
    out = run_script(TWO, tmp_path, args=[TARGET], timeout=900)
    np.testing.assert_allclose(out["two"], out["one"], rtol=1e-5, atol=1e-5)
    assert out["err_one"] == out["err_two"] and out["err_one"][-1]


def test_screen_file_refuses_another_screen_in_the_same_folder(tmp_path):
    import biomed_toolkit as bt
    from biomed_toolkit.core.errors import InputError

    _library(tmp_path / "lib.smi", 20)
    model = bt.mammal.load(device="cpu")
    res = bt.mammal.screen_file(model, TARGET, tmp_path / "lib.smi", tmp_path / "out", chunk_size=10, progress=False)
    assert res.computed_chunks == [0, 1] and len(res.read()) == 20
    again = bt.mammal.screen_file(model, TARGET, tmp_path / "lib.smi", tmp_path / "out", chunk_size=10, progress=False)
    assert again.computed_chunks == []
    with pytest.raises(InputError, match="another screen"):
        bt.mammal.screen_file(model, TARGET[:-5], tmp_path / "lib.smi", tmp_path / "out", chunk_size=10, progress=False)
    state = json.loads((tmp_path / "out" / "screen.json").read_text())
    assert state["n_molecules"] == 20


def test_predict_tokenizes_each_prompt_once_and_workers_agree(monkeypatch):
    import biomed_toolkit as bt

    model = bt.mammal.load(device="cpu")
    smiles = bt.mammal.esol().smiles.tolist()[:30] + ["C1CC", "CC(=O)Oc1ccccc1C(=O)O"]
    rows = {"protein": [TARGET] * len(smiles), "smiles": smiles}
    calls = []
    real = type(model.tokenizer).encode_one

    def counting(self, prompt, **kw):
        calls.append(prompt)
        return real(self, prompt, **kw)

    monkeypatch.setattr(type(model.tokenizer), "encode_one", counting)
    one = bt.mammal.predict(model, "dti", rows, batch_size=8, progress=False)
    assert len(calls) == len(smiles) - 1  # "C1CC" fails when its prompt is built, before tokenization
    monkeypatch.undo()
    workers = bt.mammal.predict(model, "dti", rows, batch_size=8, progress=False, num_workers=2)
    np.testing.assert_array_equal(one["prediction"].to_numpy(), workers["prediction"].to_numpy())
    assert one["error"].notna().tolist() == workers["error"].notna().tolist()
    assert one.loc[len(smiles) - 2, "error"] and np.isnan(one.loc[len(smiles) - 2, "prediction"])
