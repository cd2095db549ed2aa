"""Perturbation head, prediction and metrics on pbmc68k_reduced counts with simulated knock-outs.

Perturbed cells are real cells whose counts were changed by a known rule (the knocked-out gene
set to zero, two target genes raised), so the expected pseudobulk change is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.rna import perturbation as P

from .helpers import fresh_model


def test_perturbation_metrics_known_values():
    control = np.array([1.0, 2.0, 3.0, 4.0])
    truth = control + np.array([0.5, 0.0, -0.5, 0.0])
    perfect = P.perturbation_metrics(truth, truth, control)
    assert perfect["pearson"].item() == pytest.approx(1.0)
    assert perfect["delta_pearson"].item() == pytest.approx(1.0)
    assert perfect["mae"].item() == 0.0
    # predicting "no change" scores a high plain Pearson but no delta correlation
    nochange = P.perturbation_metrics(control, truth, control)
    assert nochange["pearson"].item() > 0.5 and np.isnan(nochange["delta_pearson"].item())
    assert nochange["mae"].item() == pytest.approx(0.25)
    opposite = P.perturbation_metrics(control - (truth - control), truth, control)
    assert opposite["delta_pearson"].item() == pytest.approx(-1.0)
    genes = ["a", "b", "c", "d"]
    # DataFrames are aligned on gene names, whatever their column order
    pred = pd.DataFrame([truth], index=["KO"], columns=genes)
    shuffled = pred[genes[::-1]]
    df = P.perturbation_metrics(pred, shuffled, pd.Series(control, index=genes))
    assert list(df.index) == ["KO"] and df["mae"].item() == 0.0
    with pytest.raises(InputError):
        P.perturbation_metrics(np.ones((2, 3)), np.ones((2, 4)), np.ones(3))




@pytest.fixture(scope="module")
def simulated():
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    adata = pbmc68k_counts()
    rng = np.random.default_rng(0)
    group = rng.choice(["control", "LTB", "HLA-DRA"], size=adata.n_obs, p=[0.4, 0.3, 0.3])
    x = adata.X.toarray()
    genes = list(adata.var_names)
    for ko, ups in (("LTB", ["CCL5", "NKG7"]), ("HLA-DRA", ["LYZ", "S100A9"])):
        m = group == ko
        x[m, genes.index(ko)] = 0
        for u in ups:
            x[m, genes.index(u)] = rng.poisson(x[m, genes.index(u)] * 4 + 1)
    adata.X = sp.csr_matrix(x.astype(np.float32))
    adata.obs["perturbation"] = group
    test = rng.random(adata.n_obs) < 0.3
    return adata[~test].copy(), adata[test].copy()


def test_finetune_and_predict_perturbation(simulated, tmp_path):
    torch.set_num_threads(1)
    train, test = simulated
    base = fresh_model(train.var_names)
    pm = P.finetune_perturbation(train, "perturbation", base, n_genes=64, max_epochs=5,
                                 batch_size=16, learning_rate=3e-3, checkpoint_dir=tmp_path / "ckpt",
                                 enable_progress_bar=False)
    assert {"LTB", "HLA-DRA", "CCL5"} <= set(pm.genes) and len(pm.genes) == 64
    assert pm.history["val_loss"].notna().any()
    ctrl = test[test.obs["perturbation"] == "control"]
    pred = P.predict_perturbation(ctrl, ["LTB", "HLA-DRA"], pm)
    assert pred.shape == (2, 64) and list(pred.index) == ["LTB", "HLA-DRA"]
    truth = P.pseudobulk(test[test.obs["perturbation"] != "control"], pm.genes, pm.base,
                         groupby="perturbation")
    control = P.pseudobulk(ctrl, pm.genes, pm.base)
    metrics = P.perturbation_metrics(pred, truth, control)
    assert (metrics["delta_pearson"] > 0.5).all(), metrics
    # the knocked-out gene is predicted far below its control level, only when flagged
    assert pred.loc["LTB", "LTB"] < 0.3 * control["LTB"].item()
    assert pred.loc["HLA-DRA", "LTB"] > 0.5 * control["LTB"].item()
    # save / load gives the same predictions
    pm.save_pretrained(tmp_path / "pm")
    again = P.PerturbationModel.from_pretrained(tmp_path / "pm", device="cpu")
    assert again.genes == pm.genes and again.card.family == "bmfm-rna"
    assert again.config.to_dict() == pm.config.to_dict()
    for key, value in pm.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    np.testing.assert_allclose(P.predict_perturbation(ctrl, ["LTB", "HLA-DRA"], again), pred,
                               atol=1e-5)
    with pytest.raises(InputError, match="not in the model's gene panel"):
        P.predict_perturbation(ctrl, ["NOT_A_GENE"], pm)
    with pytest.raises(InputError, match="no perturbation head"):
        P.predict_perturbation(ctrl, ["LTB"], base)


def test_the_earlier_two_file_layout_still_loads(tmp_path):
    """Folders saved before the one lifecycle: encoder folder + perturbation head files."""
    import json

    from biomed_toolkit.core.errors import CheckpointError
    from biomed_toolkit.core.weights import save_safetensors
    from biomed_toolkit.rna.perturbation.loading import HEAD_CONFIG, HEAD_FILE

    base = fresh_model(["CD3E", "LYZ", "NKG7", "MS4A1"])
    pm = P.PerturbationModel.from_base(base, ["LYZ", "CD3E"])
    with torch.no_grad():
        pm.head[-1].bias.fill_(0.25)
    folder = tmp_path / "old"
    base.save_pretrained(folder)
    head = {k: v.contiguous() for k, v in pm.state_dict().items() if not k.startswith("base.")}
    save_safetensors(head, folder / HEAD_FILE)
    (folder / HEAD_CONFIG).write_text(json.dumps({"genes": pm.genes}))
    again = P.PerturbationModel.from_pretrained(folder, device="cpu")
    assert again.genes == ["LYZ", "CD3E"] and again.card is not None
    x, f = torch.rand(3, 2), torch.tensor([[1, 0]] * 3)
    torch.testing.assert_close(again.predict_expression(x, f), pm.eval().predict_expression(x, f))
    # an encoder folder without a head is refused, naming both layouts
    base.save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match=HEAD_CONFIG):
        P.PerturbationModel.from_pretrained(tmp_path / "plain", device="cpu")
    with pytest.warns(FutureWarning):
        P.load_perturbation_model(folder, device="cpu")
