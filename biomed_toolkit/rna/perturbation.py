"""Genetic perturbation prediction with BMFM-RNA: head, fine-tuning, prediction and metrics.

Input (as in the BMFM-RNA perturbation task): a control cell over a fixed gene panel (zeros
included, so every panel gene gets a prediction) plus a 0/1 ``perturbations`` token field that
flags the perturbed gene(s). The field is embedded and added to the gene embedding before the
embedding LayerNorm. Target: the perturbed cell's log-normalised expression of every panel gene;
loss: MSE on nonzero targets + is-zero BCE. Predictions are residual on the control expression,
so an untrained head predicts "no change".

Metrics (:func:`perturbation_metrics`): pseudobulk Pearson, delta-Pearson (on the change against
control) and MAE.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.errors import InputError
from ..core.finetune import finetune_doc
from ..core.log import get_logger, timed

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from .modeling import BmfmRnaModel

log = get_logger(__name__)

__all__ = [
    "PerturbationModel",
    "finetune_perturbation",
    "load_perturbation_model",
    "normalized_panel",
    "perturbation_metrics",
    "predict_perturbation",
    "pseudobulk",
]

HEAD_FILE = "perturbation_head.safetensors"
HEAD_CONFIG = "perturbation_config.json"


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _column_ids(adata: AnnData, model: Any) -> np.ndarray:
    from .tokenize import match_genes

    limit = getattr(getattr(model, "config", None), "limit_genes", "protein_coding")
    report = match_genes(adata, model, limit_genes=limit, compute_coverage=False, log_summary=False)
    return report.column_token_ids


def normalized_panel(adata: AnnData, genes: Sequence[str], model: BmfmRnaModel,
                     *, layer: str | None = None) -> np.ndarray:
    """Log-normalised expression ``log1p(count / (sum + 1) * 1e4)`` of ``genes`` (dense, float32).

    The sum runs over every gene of the cell that the model keeps (as BMFM-RNA encoding does).
    """
    from .io import check_counts, iter_csr_chunks

    col_ids = _column_ids(adata, model)
    pos = pd.Index(adata.var_names).get_indexer(list(genes))
    missing = [g for g, p in zip(genes, pos) if p < 0]
    if missing:
        raise InputError(f"panel genes {missing[:10]} are not in adata.var_names")
    kept = col_ids >= 0
    out = np.empty((adata.n_obs, len(genes)), dtype=np.float32)
    for off, csr in iter_csr_chunks(adata, layer=layer, chunk_size=4096):
        check_counts(csr.data, where="adata.X" if layer is None else f"adata.layers[{layer!r}]")
        sums = np.asarray(csr[:, kept].sum(axis=1)).ravel().astype(np.float64)
        block = csr[:, pos].toarray().astype(np.float64)
        out[off:off + csr.shape[0]] = np.log1p(block / (sums[:, None] + 1.0) * 1e4)
    return out


def _parse(perturbation: str | Sequence[str]) -> list[str]:
    if isinstance(perturbation, str):
        return [g for g in perturbation.split("+") if g and g.lower() != "ctrl"]
    return [str(g) for g in perturbation]


def pseudobulk(adata: AnnData, genes: Sequence[str], model: BmfmRnaModel, *, groupby: str | None = None,
               layer: str | None = None) -> pd.DataFrame:
    """Mean log-normalised expression of ``genes`` per group (one row per group, or ``"all"``)."""
    x = normalized_panel(adata, genes, model, layer=layer)
    if groupby is None:
        return pd.DataFrame(x.mean(axis=0)[None, :], index=["all"], columns=list(genes))
    groups = adata.obs[groupby].astype(str).to_numpy()
    names = list(pd.unique(groups))
    return pd.DataFrame(np.stack([x[groups == g].mean(axis=0) for g in names]), index=names,
                        columns=list(genes))


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------

class PerturbationModel(nn.Module):
    """A BMFM-RNA encoder with a 0/1 perturbation token field and a per-gene expression head.

    ``forward(expressions, flags)`` takes the control cell's log-normalised panel values
    (B, P) and perturbation flags (B, P), and returns ``(value, is_zero_logit)`` (B, P) each.
    ``predict_expression`` gives the expected expression ``value * P(nonzero)``.
    """

    def __init__(self, base: Any, genes: Sequence[str]) -> None:
        super().__init__()
        self.base = base
        self.genes = [str(g) for g in genes]
        tok = base.tokenizer
        ids = tok.gene_ids(self.genes)
        if (ids < 0).any():
            bad = [g for g, i in zip(self.genes, ids) if i < 0]
            raise InputError(f"panel genes {bad[:10]} are not in the model vocabulary")
        n_cls = base.config.n_cls_tokens
        self.n_cls = n_cls
        self.register_buffer("gene_ids", torch.as_tensor(
            [*tok.cls_token_ids(n_cls), *ids.tolist(), 1], dtype=torch.long), persistent=False)
        h = base.config.hidden_size
        self.perturbation_embeddings = nn.Embedding(2, h)
        nn.init.normal_(self.perturbation_embeddings.weight, std=0.02)
        with torch.no_grad():
            self.perturbation_embeddings.weight[0].zero_()  # unflagged genes: unchanged input
        self.head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, 2))
        self._flags: Any = None
        gene_emb = base.backbone.input_embeddings.genes_embeddings
        self._hook = gene_emb.register_forward_hook(self._add_flags)
        self.card = base.card
        self.history: Any = None
        self.fit_result: Any = None

    # what core.finetune.finetune_model needs (the encoder's, under ``base.``)
    family = "bmfm-rna"

    @property
    def config(self) -> Any:
        return self.base.config

    def lora_targets(self) -> list[str]:
        return self.base.lora_targets()

    def _freeze_patterns(self, n_blocks: int) -> list[str]:
        return [f"base.{p}" for p in self.base._freeze_patterns(n_blocks)]

    def merge_lora(self) -> PerturbationModel:
        self.base.merge_lora()
        return self

    def _add_flags(self, module: Any, inputs: Any, output: Any) -> Any:
        if self._flags is None:
            return output
        return output + self.perturbation_embeddings(self._flags)

    def forward(self, expressions: Any, flags: Any) -> tuple[Any, Any]:
        from .tokenize import special_value, special_values

        b, p = expressions.shape
        dev = expressions.device
        # each leading CLS token carries its own code (v2: -4, -6, ..., -9; v1: -4)
        cls_vals = torch.as_tensor(special_values(self.gene_ids[:self.n_cls].tolist()), device=dev)
        sep_val = special_value(1)
        expr = torch.cat([
            cls_vals.expand(b, -1),
            expressions.float(),
            torch.full((b, 1), sep_val, device=dev),
        ], dim=1)
        genes = self.gene_ids.to(dev).unsqueeze(0).expand(b, -1)
        pad = torch.zeros((b, self.n_cls), dtype=torch.long, device=dev)
        self._flags = torch.cat([pad, flags.long(), pad[:, :1]], dim=1)
        try:
            hidden, _ = self.base.encode(genes, expr)
        finally:
            self._flags = None
        out = self.head(hidden[:, self.n_cls:self.n_cls + p])
        value = expressions.float() + out[..., 0]  # residual: untrained head = no change
        return value, out[..., 1]

    @torch.no_grad()
    def predict_expression(self, expressions: Any, flags: Any) -> Any:
        value, is_zero = self.forward(expressions, flags)
        return value.clamp_min(0) * torch.sigmoid(-is_zero)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Base model folder plus ``perturbation_head.safetensors`` and its JSON config."""
        from ..core.weights import save_safetensors

        directory = Path(directory)
        self.base.save_pretrained(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                 if not k.startswith("base.")}
        save_safetensors(state, directory / HEAD_FILE)
        with open(directory / HEAD_CONFIG, "w") as fh:
            json.dump({"genes": self.genes}, fh)
        return directory

class PerturbationModule(L.LightningModule):
    """Lightning wrapper: MSE on nonzero targets + is-zero BCE; logs train/val loss."""

    def __init__(self, model: PerturbationModel, lr: float = 1e-3, weight_decay: float = 0.01) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay

    def _loss(self, batch: dict[str, Any]) -> Any:
        value, is_zero = self.model(batch["expressions"], batch["flags"])
        target = batch["target"]
        nz = target > 0
        mse = ((value - target) ** 2)[nz].mean() if nz.any() else value.sum() * 0
        bce = nn.functional.binary_cross_entropy_with_logits(is_zero, (~nz).float())
        return mse + bce, mse

    def training_step(self, batch: dict[str, Any], _idx: int) -> Any:
        loss, mse = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch: dict[str, Any], _idx: int) -> None:
        loss, mse = self._loss(batch)
        n = len(batch["target"])
        self.log("val_loss", loss, prog_bar=True, batch_size=n)
        self.log("val_mse", mse, batch_size=n)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

class PairDataset(Dataset):
    def __init__(self, control: np.ndarray, target: np.ndarray, flags: np.ndarray,
                 pairs: np.ndarray) -> None:
        self.control, self.target, self.flags, self.pairs = control, target, flags, pairs

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"expressions": torch.from_numpy(self.control[self.pairs[i]]),
                "flags": torch.from_numpy(self.flags[i]),
                "target": torch.from_numpy(self.target[i])}


def _flags_for(genes: Sequence[str], perturbed: Sequence[str]) -> np.ndarray:
    index = {g: i for i, g in enumerate(genes)}
    missing = [g for g in perturbed if g not in index]
    if missing:
        raise InputError(
            f"perturbed gene(s) {missing} are not in the model's gene panel; add them with genes= "
            "when fine-tuning"
        )
    f = np.zeros(len(genes), dtype=np.int64)
    f[[index[g] for g in perturbed]] = 1
    return f


def _choose_panel(adata: AnnData, model: Any, perturbed: Sequence[str], n_genes: int) -> list[str]:
    col_ids = _column_ids(adata, model)
    names = np.asarray(adata.var_names)
    kept = np.flatnonzero(col_ids >= 0)
    absent = [g for g in perturbed if g not in set(names[kept])]
    if absent:
        raise InputError(
            f"perturbed gene(s) {absent} are not among the data's genes known to the model "
            "vocabulary (check gene symbols, or limit_genes for non protein-coding genes)"
        )
    x = adata.X[:, kept]
    mean = np.asarray(x.mean(axis=0)).ravel()
    order = kept[np.argsort(-mean, kind="stable")]
    panel = list(dict.fromkeys([*perturbed, *names[order].tolist()]))
    return panel[:max(n_genes, len(set(perturbed)))]


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
@finetune_doc
def finetune_perturbation(
    adata: AnnData,
    perturbation_key: str,
    model: BmfmRnaModel | None = None,
    *,
    control: str = "control",
    genes: Sequence[str] | None = None,
    n_genes: int = 256,
    max_epochs: int = 5,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    lora: bool = False,
    lora_rank: int = 8,
    freeze: int | str | list[str] | None = None,
    val_fraction: float = 0.1,
    accelerator: str = "auto",
    devices: Any = "auto",
    num_nodes: int = 1,
    early_stopping: bool | dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    seed: int = 0,
    **trainer_kwargs: Any,
) -> PerturbationModel:
    """Train a perturbation head on cells of ``adata`` (raw counts), on the fine-tuning contract
    shared by every family (:func:`biomed_toolkit.core.finetune.finetune_model`).

    Parameters
    ----------
    adata
        Control and perturbed cells; ``obs[perturbation_key]`` holds ``control`` or the perturbed
        gene(s) (``"GENE"`` or ``"GENE1+GENE2"``).
    perturbation_key
        ``adata.obs`` column naming each cell's perturbation.
    model
        A BMFM-RNA model (default: the embedded model); copied, never changed in place.
    control
        Value of ``obs[perturbation_key]`` for control cells.
    genes
        Gene panel to predict (default: perturbed genes + the ``n_genes`` most expressed).
    val_fraction
        Share of perturbed cells held out for ``val_loss``.
    seed
        Pairs each perturbed cell with a random control cell, splits and seeds the training.
    {finetune_parameters}

    ``freeze="encoder"`` trains only the perturbation embedding and the head.

    Returns
    -------
    A new PerturbationModel with ``.history``, ``.fit_result``, ``.card`` and ``.genes``.

    Examples
    --------
    >>> pm = finetune_perturbation(adata, "perturbation", model, max_epochs=3)  # doctest: +SKIP
    >>> pred = predict_perturbation(adata[adata.obs.perturbation == "control"], ["CD3E"], pm)  # doctest: +SKIP
    """
    from ..core.finetune import finetune_model
    from .loading import load

    if perturbation_key not in adata.obs:
        raise InputError(f"{perturbation_key!r} not in adata.obs (columns: {list(adata.obs.columns)})")
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    is_ctrl = labels == control
    if not is_ctrl.any():
        raise InputError(f"no control cells: no obs[{perturbation_key!r}] == {control!r}")
    if is_ctrl.all():
        raise InputError("no perturbed cells: every cell is a control")
    base = load() if model is None else model
    perts = sorted(set(labels[~is_ctrl]))
    perturbed_genes = sorted({g for p in perts for g in _parse(p)})
    panel = list(genes) if genes is not None else _choose_panel(adata, base, perturbed_genes, n_genes)
    max_len = base.config.n_cls_tokens + len(panel) + 1
    log.info(f"perturbation panel: {len(panel)} genes ({max_len} tokens per cell), "
             f"{len(perts)} perturbations, {int(is_ctrl.sum())} control cells")
    x = normalized_panel(adata, panel, base)
    ctrl_x = x[is_ctrl]
    pert_idx = np.flatnonzero(~is_ctrl)
    flags = np.stack([_flags_for(panel, _parse(labels[i])) for i in pert_idx])
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(ctrl_x), size=len(pert_idx))
    order = rng.permutation(len(pert_idx))
    n_val = int(round(val_fraction * len(order)))
    val, tr = order[:n_val], order[n_val:]
    train_ds = PairDataset(ctrl_x, x[pert_idx[tr]], flags[tr], pairs[tr])
    val_ds = PairDataset(ctrl_x, x[pert_idx[val]], flags[val], pairs[val]) if n_val else None
    if freeze == "encoder":
        freeze = "base.*"
    with timed(log, f"fine-tuning a perturbation head on {len(tr)} perturbed cells"):
        pm = finetune_model(
            PerturbationModel(base.cpu(), panel),
            lambda m: PerturbationModule(m, lr=learning_rate), train_ds, val_ds,
            max_epochs=max_epochs, batch_size=batch_size, lora=lora, lora_rank=lora_rank,
            trainable=("perturbation_embeddings", "head."), freeze=freeze,
            accelerator=accelerator, devices=devices, num_nodes=num_nodes,
            early_stopping=early_stopping, checkpoint_dir=checkpoint_dir, resume=resume,
            progress=progress, seed=seed, task="perturbation",
            card_extra={"genes": len(panel), "perturbations": perts}, **trainer_kwargs)
    return pm


def load_perturbation_model(directory: str | Path, *, device: Any = "cpu") -> Any:
    """Load a folder written by ``PerturbationModel.save_pretrained``."""
    from ..core.weights import load_state_dict, read_safetensors
    from .loading import load

    directory = Path(directory)
    if not (directory / HEAD_CONFIG).is_file():
        raise InputError(f"{directory} has no {HEAD_CONFIG}: not a perturbation model folder")
    with open(directory / HEAD_CONFIG) as fh:
        cfg = json.load(fh)
    base = load(directory, device=device)
    pm = PerturbationModel(base, cfg["genes"])
    tensors, _ = read_safetensors(directory / HEAD_FILE)
    full = {f"base.{k}": v for k, v in base.state_dict().items()}
    full.update(tensors)
    load_state_dict(pm, full)
    return pm.eval()


def predict_perturbation(
    adata_control: AnnData,
    perturbations: Sequence[str | Sequence[str]] | Mapping[str, Sequence[str]],
    model: PerturbationModel,
    *,
    n_cells: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    layer: str | None = None,
) -> pd.DataFrame:
    """Predict pseudobulk expression after each perturbation of the control cells.

    Parameters
    ----------
    adata_control
        Control cells (raw counts).
    perturbations
        Gene names (``"GENE"`` or ``"GENE1+GENE2"``), lists of genes, or a dict name -> genes.
    model
        A :class:`PerturbationModel` (from :func:`finetune_perturbation` or
        :func:`load_perturbation_model`).
    n_cells
        Use a random subset of this many control cells (``seed``); default all.
    batch_size
        Cells per forward pass.

    Returns
    -------
    DataFrame (perturbations x panel genes) of predicted mean log-normalised expression.
    Compare with :func:`pseudobulk` of real perturbed cells through :func:`perturbation_metrics`.

    Examples
    --------
    >>> pred = predict_perturbation(ctrl, ["CD3E", "LYZ+S100A8"], pm)  # doctest: +SKIP
    """
    if not hasattr(model, "predict_expression"):
        raise InputError(
            "model has no perturbation head: fine-tune one first with "
            "bt.rna.perturbation.finetune_perturbation(adata, perturbation_key, model)"
        )
    if isinstance(perturbations, Mapping):
        items = [(str(k), list(v)) for k, v in perturbations.items()]
    else:
        items = [(p if isinstance(p, str) else "+".join(p), _parse(p)) for p in perturbations]
    if not items:
        raise InputError("perturbations is empty")
    x = normalized_panel(adata_control, model.genes, model.base, layer=layer)
    if n_cells is not None and n_cells < len(x):
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), n_cells, replace=False))]
    model.eval()
    dev = next(model.parameters()).device
    rows = []
    with timed(log, f"predicting {len(items)} perturbations on {len(x)} control cells"), \
            torch.no_grad():
        for _name, genes in items:
            flag = torch.from_numpy(_flags_for(model.genes, genes))
            total = np.zeros(len(model.genes))
            for lo in range(0, len(x), batch_size):
                e = torch.from_numpy(x[lo:lo + batch_size]).to(dev)
                f = flag.to(dev).unsqueeze(0).expand(len(e), -1)
                total += model.predict_expression(e, f).double().sum(0).cpu().numpy()
            rows.append(total / len(x))
    return pd.DataFrame(np.stack(rows), index=[n for n, _ in items], columns=model.genes)


def perturbation_metrics(pred: Any, truth: Any, control: Any) -> pd.DataFrame:
    """Pseudobulk Pearson, delta-Pearson and MAE of predicted against observed perturbations.

    Parameters
    ----------
    pred, truth
        DataFrames (perturbations x genes; aligned on index and columns) or arrays of the same
        shape (1-D = one perturbation).
    control
        Control pseudobulk: a Series/1-D array over the same genes (or a one-row DataFrame).

    Returns
    -------
    DataFrame with one row per perturbation and columns ``pearson`` (pred vs truth),
    ``delta_pearson`` (pred - control vs truth - control), ``mae``.

    Examples
    --------
    >>> import numpy as np
    >>> c = np.array([1.0, 2.0, 3.0, 4.0])
    >>> perturbation_metrics(c + [1, 0, 0, 0], c + [2, 0, 0, 0], c)["delta_pearson"].item()
    1.0
    """
    if isinstance(pred, pd.DataFrame) and isinstance(truth, pd.DataFrame):
        common_rows = [i for i in pred.index if i in truth.index]
        common_cols = [c for c in pred.columns if c in truth.columns]
        if not common_rows or not common_cols:
            raise InputError("pred and truth share no perturbation (index) or gene (column)")
        index = common_rows
        p = pred.loc[common_rows, common_cols].to_numpy(dtype=float)
        t = truth.loc[common_rows, common_cols].to_numpy(dtype=float)
        if isinstance(control, pd.DataFrame):
            control = control.iloc[0]
        c = (control[common_cols] if isinstance(control, pd.Series) else np.asarray(control))
        c = np.asarray(c, dtype=float)
    else:
        p, t = np.atleast_2d(np.asarray(pred, float)), np.atleast_2d(np.asarray(truth, float))
        c = np.asarray(control.iloc[0] if isinstance(control, pd.DataFrame) else control, float)
        index = list(pred.index) if isinstance(pred, pd.DataFrame) else list(range(len(p)))
    if p.shape != t.shape or c.shape[-1] != p.shape[1]:
        raise InputError(f"shapes differ: pred {p.shape}, truth {t.shape}, control {c.shape}")

    def _r(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / den) if den > 0 else float("nan")

    rows = [{"pearson": _r(pi, ti), "delta_pearson": _r(pi - c, ti - c),
             "mae": float(np.abs(pi - ti).mean())} for pi, ti in zip(p, t)]
    return pd.DataFrame(rows, index=pd.Index(index, name="perturbation"))
