import numpy as np
import pytest
import torch

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.inference import ChunkedPredictions, distributed_predict
from tests.core._inference_models import Items, ScoreFn, Scorer, square_index
from tests.script_job import run_script


def _reference(n: int = 37, batch_size: int = 4) -> dict[str, np.ndarray]:
    model = Scorer()
    return distributed_predict(ScoreFn(model), Items(n), batch_size=batch_size, module=model,
                               accelerator="cpu", devices=1, progress=False)


def test_one_process_rows_follow_item_order():
    torch.set_num_threads(1)
    out = _reference()
    model = Scorer()
    with torch.no_grad():
        direct = model(Items(37).x)
    assert out["score"].shape == (37,) and out["embedding"].shape == (37, 3)
    np.testing.assert_allclose(out["score"], direct["score"].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["embedding"], direct["embedding"].numpy(), rtol=1e-6, atol=1e-6)


def test_index_range_and_streamed_blocks(tmp_path):
    out = distributed_predict(square_index, 10, batch_size=3, accelerator="cpu", devices=1, progress=False)
    assert out["index"].tolist() == list(range(10))
    assert out["square"].tolist() == [i * i for i in range(10)]
    chunks = distributed_predict(square_index, range(10), batch_size=4, accelerator="cpu", devices=1,
                                 progress=False, output_dir=tmp_path / "parts")
    assert isinstance(chunks, ChunkedPredictions)
    assert [(lo, hi) for lo, hi, _ in chunks] == [(0, 4), (4, 8), (8, 10)]
    assert chunks.load()["square"].tolist() == [i * i for i in range(10)]
    (tmp_path / "parts" / "part-000000000004-000000000008.npz").unlink()
    with pytest.raises(RuntimeError, match="missing 4 of 10 items"):
        chunks.load()


@pytest.mark.parametrize("bad", [0, -1, 2.5, "big", True])
def test_batch_size_is_checked(bad):
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        distributed_predict(square_index, 5, batch_size=bad, accelerator="cpu", devices=1)


def test_outputs_need_one_row_per_item():
    with pytest.raises(InputError, match="one row per item"):
        distributed_predict(lambda b: {"x": torch.zeros(1)}, 6, batch_size=3, accelerator="cpu",
                            devices=1, progress=False)
    with pytest.raises(InputError, match="dict of arrays"):
        distributed_predict(lambda b: b, 6, batch_size=3, accelerator="cpu", devices=1, progress=False)


def test_zero_items():
    assert distributed_predict(square_index, 0, accelerator="cpu", devices=1) == {}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp_notebook", "ddp_spawn"])
def test_two_forked_or_spawned_processes_equal_one(strategy):
    """The notebook path (fork) and spawn: the caller is not a rank and reads the blocks back."""
    ref = _reference()
    model = Scorer()
    out = distributed_predict(ScoreFn(model), Items(37), batch_size=4, module=model, accelerator="cpu",
                              devices=2, strategy=strategy, progress=False)
    for key in ref:
        np.testing.assert_array_equal(out[key], ref[key])
    pids = distributed_predict(square_index, 9, batch_size=2, accelerator="cpu", devices=2,
                               strategy=strategy, progress=False)["pid"]
    assert len(set(pids.tolist())) == 2  # both processes did work


SCRIPT = """
    import json, os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from biomed_toolkit.core.inference import distributed_predict
    from tests.core._inference_models import Items, Scorer, ScoreFn, square_index

    model = Scorer()
    out = distributed_predict(ScoreFn(model), Items(37), batch_size=4, module=model,
                              accelerator="cpu", devices=int(sys.argv[1]), progress=False)
    pids = distributed_predict(square_index, 9, batch_size=2, accelerator="cpu",
                               devices=int(sys.argv[1]), progress=False)["pid"]
    rank = int(os.environ.get("LOCAL_RANK", 0))
    np.savez(f"rank{rank}.npz", **out)
    if rank == 0:  # both ranks share stdout: one JSON line
        print(json.dumps({"rank": rank, "n_pids": len(set(pids.tolist()))}))
"""


@pytest.mark.slow
def test_plain_script_with_two_processes_equals_one(tmp_path):
    """``python script.py`` with devices=2 (Lightning re-runs the script for rank 1): every rank
    returns every item, equal to the one-process result."""
    ref = _reference()
    info = run_script(SCRIPT, tmp_path, args=["2"])
    assert info == {"rank": 0, "n_pids": 2}
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as z:
            assert set(z.files) == set(ref)
            for key in ref:
                np.testing.assert_array_equal(z[key], ref[key])


@pytest.mark.slow
def test_cluster_launcher_ranks_from_environment(tmp_path):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; devices='auto' follows it."""
    import socket
    import sys

    ref = _reference()
    code = SCRIPT.replace("devices=int(sys.argv[1])", 'devices="auto"')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    run_script(code, tmp_path, launcher=launcher)
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as z:
            for key in ref:
                np.testing.assert_array_equal(z[key], ref[key])


@pytest.mark.slow
def test_notebook_kernel_two_processes_equal_one(tmp_path):
    """In a Jupyter kernel strategy="auto" is fork-based, so a predict_fn defined in the notebook
    itself (a lambda: not picklable) runs on 2 processes, equal to 1."""
    import os

    import nbformat

    from biomed_toolkit.notebook_runner import execute_notebook
    from tests.script_job import REPO

    cells = [
        "import torch\ntorch.set_num_threads(1)\n"
        "from biomed_toolkit.core.inference import distributed_predict\n"
        "from biomed_toolkit.core.train import choose_strategy\n"
        "assert choose_strategy('auto', 2, 1, 'cpu') == 'ddp_notebook'",
        "w = torch.linspace(-1, 1, 12).reshape(4, 3)\n"
        "fn = lambda idx: {'y': torch.tanh(idx.float()[:, None] * w[0]), 'i': idx}\n"
        "one = distributed_predict(fn, 23, batch_size=5, accelerator='cpu', devices=1, progress=False)\n"
        "two = distributed_predict(fn, 23, batch_size=5, accelerator='cpu', devices=2, progress=False)\n"
        "assert (two['i'] == list(range(23))).all()\n"
        "assert (one['y'] == two['y']).all()\n"
        "print('OK', two['y'].shape)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    path = tmp_path / "ddp.ipynb"
    nbformat.write(nb, path)
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    run = execute_notebook(path, timeout=600, env={"PYTHONPATH": pythonpath})
    assert run.error is None, run.error
    text = "".join(o.get("text", "") for o in run.notebook.cells[1].outputs)
    assert "OK (23, 3)" in text
