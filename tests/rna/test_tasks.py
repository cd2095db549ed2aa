"""bt.tl embed / annotate / finetune / reference_map on pbmc68k_reduced (real cells).

Models: the official-layout fixture checkpoint (through ``bt.rna.load``) for inference, and a
fresh small model over the dataset's genes for fine-tuning (the fixture's random weights give a
near-constant CLS state that cannot be fine-tuned in a few steps).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import biomed_toolkit as bt
from biomed_toolkit.core.errors import InputError
from biomed_toolkit.rna import tasks

from .helpers import fresh_model


@pytest.fixture(scope="module")
def counts():
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    return pbmc68k_counts()


@pytest.fixture(scope="module")
def small(counts):
    """120 cells of three types, in a fixed random order."""
    keep = counts.obs["bulk_labels"].isin(["CD14+ Monocyte", "CD19+ B", "CD56+ NK"]).to_numpy()
    idx = np.flatnonzero(keep)
    idx = np.sort(np.random.default_rng(0).choice(idx, 120, replace=False))
    return counts[idx].copy()


@pytest.fixture(scope="module")
def fixture_model(fixtures_dir):
    torch.set_num_threads(1)
    return bt.rna.load(fixtures_dir / "bmfm_rna_official_tiny" / "ckpt" / "last.ckpt", device="cpu")




# ------------------------------------------------------------------------------------------
# embed
# ------------------------------------------------------------------------------------------
def test_embed_writes_obsm_and_provenance(small, fixture_model, tmp_path):
    adata = small.copy()
    before = adata.X.copy()
    assert tasks.embed(adata, fixture_model, progress=False) is None
    x = adata.obsm["X_bmfm"]
    assert x.shape == (adata.n_obs, fixture_model.config.hidden_size) and x.dtype == np.float32
    assert np.isfinite(x).all()
    rec = adata.uns["X_bmfm"]
    assert rec["params"]["pooling"] == "first_token" and rec["params"]["max_length"] == 1024
    assert rec["model"]["sha256"] == "44b83939a17bfa480859c97ef818591770a15cc7d6e2c2d661daa1f38cd0ba9c"
    gm = rec["gene_match"]
    assert gm["n_matched"] + gm["n_unmatched"] + gm["n_not_protein_coding"] + gm["n_duplicated"] \
        == adata.n_vars
    assert 0.5 < gm["fraction_counts_covered"] <= 1.0
    assert abs(adata.X - before).sum() == 0  # counts untouched
    # equals the core's embed_cells, and the provenance survives an h5ad round trip
    ref, _ = bt.rna.embed_cells(fixture_model, small, progress=False)
    np.testing.assert_array_equal(x, ref)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = sc.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["X_bmfm"]["model"]["sha256"] == rec["model"]["sha256"]
    # cells differ from one another (not a constant vector)
    assert np.abs(x - x.mean(0)).max() > 1e-4


def test_embed_chunk_invariant_copy_and_backed(small, fixture_model, tmp_path):
    adata = small[:60].copy()
    outs = [tasks.embed(adata, fixture_model, batch_size=bs, copy=True, progress=False)
            for bs in (1, 7, 64)]
    assert "X_bmfm" not in adata.obsm  # copy=True leaves the input alone
    for o in outs[1:]:
        np.testing.assert_allclose(o.obsm["X_bmfm"], outs[0].obsm["X_bmfm"], atol=1e-5, rtol=0)
    # one cell alone gets the same vector as inside a batch
    single = tasks.embed(adata[17:18].copy(), fixture_model, copy=True, progress=False)
    np.testing.assert_allclose(single.obsm["X_bmfm"][0], outs[0].obsm["X_bmfm"][17], atol=1e-5)
    # backed (on-disk) AnnData streams and gives the same result
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = sc.read_h5ad(path, backed="r")
    res = tasks.embed(backed, fixture_model, copy=True, progress=False)
    np.testing.assert_allclose(res.obsm["X_bmfm"], outs[0].obsm["X_bmfm"], atol=1e-5)
    backed.file.close()


def test_embed_rejects_non_counts(small, fixture_model):
    adata = small[:10].copy()
    adata.X = adata.X * 0.5
    with pytest.raises(InputError, match="non-integer"):
        tasks.embed(adata, fixture_model, progress=False)


@pytest.mark.slow
def test_embed_two_processes_equal_single_process(small, fixture_model, tmp_path):
    adata = small[:48].copy()
    single = tasks.embed(adata, fixture_model, copy=True, progress=False)
    multi = tasks.embed(adata, fixture_model, copy=True, progress=False, accelerator="cpu",
                        devices=2, strategy="ddp_spawn")
    np.testing.assert_array_equal(multi.obsm["X_bmfm"], single.obsm["X_bmfm"])
    assert multi.uns["X_bmfm"]["gene_match"] == single.uns["X_bmfm"]["gene_match"]
    # backed input: each process opens the file; annotate shards the same way
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = sc.read_h5ad(path, backed="r")
    out = tasks.annotate(backed, fixture_model, copy=True, progress=False, accelerator="cpu",
                         devices=2, strategy="ddp_spawn")
    ref = tasks.annotate(adata, fixture_model, copy=True, progress=False)
    # shards change batch shapes, hence BLAS rounding (last float32 bit) of the heads
    np.testing.assert_allclose(out.obsm["bmfm_cell_type_probabilities"],
                               ref.obsm["bmfm_cell_type_probabilities"], atol=1e-6, rtol=0)
    assert (out.obs["bmfm_cell_type_raw"] == ref.obs["bmfm_cell_type_raw"]).all()
    backed.file.close()


# ------------------------------------------------------------------------------------------
# annotate
# ------------------------------------------------------------------------------------------
def test_annotate_confidence_threshold_and_fields(small, fixture_model):
    adata = small.copy()
    out = tasks.annotate(adata, fixture_model, label="cell_type", min_confidence=0.5,
                         copy=True, progress=False)
    assert "bmfm_cell_type" not in adata.obs
    probs = out.obsm["bmfm_cell_type_probabilities"]
    classes = list(out.uns["bmfm_cell_type"]["classes"])
    assert probs.shape == (adata.n_obs, len(classes)) == (adata.n_obs, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    conf = out.obs["bmfm_cell_type_confidence"].to_numpy()
    np.testing.assert_allclose(conf, probs.max(1), atol=1e-6)
    raw = out.obs["bmfm_cell_type_raw"].astype(str).to_numpy()
    assert (raw == np.asarray(classes)[probs.argmax(1)]).all()
    lab = out.obs["bmfm_cell_type"].astype(str).to_numpy()
    assert ((lab == "Unassigned") == (conf < 0.5)).all()
    assert (lab[conf >= 0.5] == raw[conf >= 0.5]).all()
    # same probabilities as the core's predict_labels
    ref, names = bt.rna.predict_labels(fixture_model, small, labels=["cell_type"],
                                       progress=False)["cell_type"]
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert names == classes
    # a stricter threshold leaves at least as many cells unassigned
    strict = tasks.annotate(adata, fixture_model, min_confidence=0.9, copy=True, progress=False)
    assert (strict.obs["bmfm_cell_type"] == "Unassigned").sum() >= (lab == "Unassigned").sum()
    with pytest.raises(InputError, match="no label head"):
        tasks.annotate(adata, fixture_model, label="bulk_labels", progress=False)


def test_annotate_majority_voting(small, fixture_model):
    adata = small.copy()
    clusters = adata.obs["bulk_labels"].astype(str).to_numpy()
    tasks.annotate(adata, fixture_model, min_confidence=0.0, majority_voting=True,
                   over_clustering=clusters, progress=False)
    per_cell = adata.obs["bmfm_cell_type"].astype(str).to_numpy()
    voted = adata.obs["bmfm_cell_type_majority_voting"].astype(str).to_numpy()
    for c in np.unique(clusters):
        m = clusters == c
        assert len(set(voted[m])) == 1
        assert voted[m][0] == pd.Series(per_cell[m]).value_counts().index[0]
    # default over-clustering: Leiden on the model embedding computed in the same pass
    tasks.annotate(adata, fixture_model, key_added="mv", majority_voting=True, progress=False)
    assert adata.obs["mv_over_clustering"].nunique() >= 2
    assert adata.uns["mv"]["params"]["resolution"] == 5.0


def test_majority_vote_min_prop():
    labels = np.array(["a", "a", "b", "b", "b", "c"])
    clusters = np.array([0, 0, 0, 1, 1, 1])
    out = tasks.majority_vote(labels, clusters)
    assert out.tolist() == ["a", "a", "a", "b", "b", "b"]
    out = tasks.majority_vote(labels, clusters, min_prop=0.7)
    assert out.tolist() == ["Heterogeneous"] * 6


# ------------------------------------------------------------------------------------------
# finetune
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_finetune_learns_and_round_trips(counts, tmp_path):
    keep = counts.obs["bulk_labels"].isin(["CD14+ Monocyte", "CD19+ B", "CD56+ NK"]).to_numpy()
    adata = counts[keep].copy()
    base = fresh_model(adata.var_names)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    # a random encoder has no features worth a linear-probe start: random head
    model = tasks.finetune(adata, "bulk_labels", base, max_epochs=10, learning_rate=3e-3,
                           head_learning_rate=3e-3, balance_classes=False,  # plain focal loss
                           batch_size=16, val_fraction=0.3, max_length=256, head_init="random",
                           checkpoint_dir=tmp_path / "ckpt", enable_progress_bar=False)
    for k, v in base.state_dict().items():  # the input model is not changed
        assert torch.equal(v, before[k]), k
    hist = model.history
    assert {"train_loss", "val_loss"} <= set(hist.columns)
    val_loss = hist["val_loss"].dropna().to_numpy()
    # focal loss of a uniform 3-class guess is (2/3)^2 * ln 3 = 0.49; the #12 recipe (warm-up +
    # cosine to 10%, clipping) ends near 0.15 here, where the constant-rate loop reached < 0.1
    assert val_loss[-1] < 0.25 and val_loss[-1] < val_loss[0]
    assert model.label_dict["bulk_labels"] == {c: i for i, c in enumerate(
        ["CD14+ Monocyte", "CD19+ B", "CD56+ NK"])}
    val = model.split["val"]
    tasks.annotate(adata, model, label="bulk_labels", min_confidence=0.0, max_length=256,
                   progress=False)
    from biomed_toolkit.rna.metrics import classification_metrics

    m = classification_metrics(adata.obs["bulk_labels"].iloc[val],
                               adata.obs["bmfm_cell_type"].iloc[val])
    assert m["macro_f1"] > 0.8, m
    # save_pretrained -> load gives the same predictions
    model.save_pretrained(tmp_path / "ft")
    again = bt.rna.load(tmp_path / "ft", device="cpu")
    out = tasks.annotate(adata, again, label="bulk_labels", min_confidence=0.0, copy=True,
                         max_length=256, progress=False)
    np.testing.assert_allclose(out.obsm["bmfm_cell_type_probabilities"],
                               adata.obsm["bmfm_cell_type_probabilities"], atol=1e-5)


def test_finetune_options_batch_head_freeze_lora(small, tmp_path):
    adata = small.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2 == 0, "b1", "b2")
    base = fresh_model(adata.var_names)
    model = tasks.finetune(adata, "bulk_labels", base, batch_key="batch", max_epochs=1,
                           freeze=1, batch_size=32, max_length=128,
                           checkpoint_dir=tmp_path / "a", enable_progress_bar=False)
    cols = {c.name: c for c in model.config.label_columns}
    assert cols["batch"].gradient_reversal_coefficient == 1.0
    assert cols["bulk_labels"].n_classes == 3
    sd, sd0 = model.state_dict(), base.state_dict()
    frozen = [k for k in sd0 if k.startswith("scbert.encoder.layer.0.") or ".embeddings." in k]
    assert frozen and all(torch.equal(sd[k], sd0[k]) for k in frozen)
    moved = [k for k in sd0 if k.startswith("scbert.encoder.layer.1.")]
    assert any(not torch.equal(sd[k], sd0[k]) for k in moved)
    # LoRA: adapters merged back into plain weights, the model saves and loads as usual
    lora = tasks.finetune(adata, "bulk_labels", base, max_epochs=1, lora=True, batch_size=32,
                          max_length=128, learning_rate=1e-2, val_fraction=0.0,
                          checkpoint_dir=tmp_path / "b", enable_progress_bar=False)
    assert not any("lora" in k for k in lora.state_dict())
    changed = [k for k in sd0 if "attention.self.query.weight" in k
               and not torch.equal(lora.state_dict()[k], sd0[k])]
    assert changed  # merged adapters changed the query weights
    key = [k for k in sd0 if "intermediate.dense.weight" in k][0]
    assert torch.equal(lora.state_dict()[key], sd0[key])  # non-adapted weights untouched
    lora.save_pretrained(tmp_path / "lora")
    assert bt.rna.load(tmp_path / "lora", device="cpu").config.label_names == ["bulk_labels"]
    with pytest.raises(InputError, match="not in adata.obs"):
        tasks.finetune(adata, "nope", base, max_epochs=1)


# ------------------------------------------------------------------------------------------
# reference_map
# ------------------------------------------------------------------------------------------
def test_reference_map_transfers_labels():
    adata = sc.datasets.pbmc68k_reduced()
    rng = np.random.default_rng(0)
    is_ref = rng.random(adata.n_obs) < 0.6
    ref, query = adata[is_ref].copy(), adata[~is_ref].copy()
    query_obs_before = list(query.obs.columns)
    out = tasks.reference_map(query, ref, "bulk_labels", use_rep="X_pca", copy=True)
    assert list(query.obs.columns) == query_obs_before
    pred = out.obs["bulk_labels_ref"].astype(str).to_numpy()
    truth = query.obs["bulk_labels"].astype(str).to_numpy()
    acc = (pred == truth).mean()
    conf = out.obs["bulk_labels_ref_confidence"].to_numpy()
    assert ((conf > 0) & (conf <= 1)).all()
    # confident calls are more often right than unsure ones
    assert (pred == truth)[conf > 0.8].mean() > (pred == truth)[conf < 0.5].mean()
    # shuffled reference labels destroy the transfer
    shuffled = ref.copy()
    shuffled.obs["bulk_labels"] = rng.permutation(shuffled.obs["bulk_labels"].to_numpy())
    tasks.reference_map(query, shuffled, "bulk_labels", use_rep="X_pca", key_added="shuf")
    acc_shuf = (query.obs["shuf"].astype(str).to_numpy() == truth).mean()
    assert acc > 0.6 and acc > acc_shuf + 0.3, (acc, acc_shuf)
    tasks.reference_map(query, ref, "bulk_labels", use_rep="X_pca", key_added="thr",
                        min_confidence=0.9)
    un = query.obs["thr"] == "Unassigned"
    assert un.any() and (query.obs["thr_confidence"][un] < 0.9).all()
    assert query.uns["thr"]["params"]["k"] == 15
    query.obsm["X_small"] = query.obsm["X_pca"][:, :5]
    ref.obsm["X_small"] = ref.obsm["X_pca"][:, :6]
    with pytest.raises(InputError, match="same model"):
        tasks.reference_map(query, ref, "bulk_labels", use_rep="X_small")


def test_default_model_is_the_embedded_demo(small):
    adata = small[:30].copy()
    tasks.embed(adata, progress=False)
    tasks.annotate(adata, progress=False)  # the demo has a cell_type head
    rec = adata.uns["X_bmfm"]["model"]
    assert rec["source"] == "embedded" and len(rec["sha256"]) == 64
    assert adata.obsm["X_bmfm"].shape[0] == 30 and np.isfinite(adata.obsm["X_bmfm"]).all()
    classes = set(adata.uns["bmfm_cell_type"]["classes"])
    assert set(adata.obs["bmfm_cell_type"].astype(str)) <= classes | {"Unassigned"}


def test_finetune_resumes_from_checkpoint_dir(small, tmp_path):
    adata = small.copy()
    base = fresh_model(adata.var_names)
    kw = dict(batch_size=32, max_length=128, val_fraction=0.0, checkpoint_dir=tmp_path / "c",
              enable_progress_bar=False)
    first = tasks.finetune(adata, "bulk_labels", base, max_epochs=1, **kw)
    steps_per_epoch = first.fit_result.global_step
    assert steps_per_epoch == int(np.ceil(adata.n_obs / 32))
    second = tasks.finetune(adata, "bulk_labels", base, max_epochs=2, **kw)
    assert second.fit_result.global_step == 2 * steps_per_epoch  # continued, not restarted
    assert second.history["step"].max() >= first.history["step"].max()


@pytest.mark.slow
def test_finetune_linear_probe_head_start(small, tmp_path):
    """With the demo encoder, a linear-probe start already separates the classes; a random
    head given the same (negligible) training does not."""
    demo = bt.rna.load(device="cpu")
    accs = {}
    for init in ("linear_probe", "random"):
        # negligible training for every part (the heads have their own rate, 1e-3 by default,
        # which lets a random head separate three types in 4 steps on a pooler that knows them)
        model = tasks.finetune(small, "bulk_labels", demo, max_epochs=1, learning_rate=1e-7,
                               head_learning_rate=1e-7,
                               val_fraction=0.0, max_length=256, head_init=init,
                               checkpoint_dir=tmp_path / init, enable_progress_bar=False)
        out = tasks.annotate(small, model, label="bulk_labels", min_confidence=0.0,
                             max_length=256, copy=True, progress=False)
        accs[init] = (out.obs["bmfm_cell_type"].astype(str) == small.obs["bulk_labels"].astype(str)).mean()
    assert accs["linear_probe"] > 0.8 and accs["linear_probe"] > accs["random"] + 0.2, accs
    with pytest.raises(InputError, match="head_init"):
        tasks.finetune(small, "bulk_labels", demo, max_epochs=1, head_init="nope")
