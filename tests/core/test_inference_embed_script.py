"""``bt.tl.embed(adata, model, devices=2, accelerator="cpu")`` from a plain ``python script.py``.

Lightning's default ``ddp`` re-runs the script for rank 1; before core.inference each rank
gathered into its own temporary folder and the call failed with "lost 97 cells".
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.script_job import run_script

SCRIPT = """
    import json, os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    import biomed_toolkit as bt
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    bt.settings.progress = False
    adata = pbmc68k_counts()[:97].copy()
    model = bt.rna.load(sys.argv[1], device="cpu")
    kwargs = {} if sys.argv[2] == "0" else {"devices": int(sys.argv[2]), "accelerator": "cpu"}
    bt.tl.embed(adata, model, **kwargs)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    np.save(f"emb{sys.argv[2]}-rank{rank}.npy", adata.obsm["X_bmfm"])
    # both ranks share stdout: one os.write of a short line is atomic on a pipe (print may split it)
    line = json.dumps({"rank": rank, "shape": list(adata.obsm["X_bmfm"].shape),
                       "gene_match": str(adata.uns["X_bmfm"]["gene_match"])})
    os.write(1, (line + "\\n").encode())
"""


@pytest.mark.slow
def test_embed_from_a_script_with_two_processes_equals_one(fixtures_dir, tmp_path):
    ckpt = str(fixtures_dir / "bmfm_rna_official_tiny" / "ckpt" / "last.ckpt")
    one = run_script(SCRIPT, tmp_path, args=[ckpt, "0"])
    two = run_script(SCRIPT, tmp_path, args=[ckpt, "2"])
    assert one["shape"] == two["shape"] == [97, one["shape"][1]]
    assert one["gene_match"] == two["gene_match"]
    ref = np.load(tmp_path / "emb0-rank0.npy")
    assert np.isfinite(ref).all()
    for rank in (0, 1):  # every rank holds every cell, equal to the one-process result
        np.testing.assert_array_equal(np.load(tmp_path / f"emb2-rank{rank}.npy"), ref)
