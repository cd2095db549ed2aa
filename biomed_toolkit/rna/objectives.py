"""Pretraining objectives of BMFM-RNA as a Lightning module: MLM, WCED and multitask label heads.

* MLM: 15% of gene positions chosen per field independently; 95% of chosen replaced by [MASK]
  (gene id 4 / value -5), the rest kept. Losses: gene cross-entropy (weight 0.7), expression MSE on
  nonzero targets, is-zero BCE (weight 1.5).
* WCED: from the CLS state only, predict every vocabulary gene of the full (untruncated) cell:
  MSE on nonzero targets + BCE(target == 0), each for input and non-input genes; -100 marks genes
  absent from the record. Inputs are not masked.
* Labels: focal loss (gamma 2) per label head on the pooler; heads with gradient reversal are
  adversarial (e.g. donor_id).

Batches come from :class:`PretrainingCollator`, which exposes zero-expression genes as the official
pretraining does: expressed genes first (random order), then genes expressed elsewhere in the
batch, then other zeros of the record, up to ``max_length``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from biomed_toolkit.core.errors import InputError

from .tokenize import CLS_ID, MASK_ID, PAD_ID, SEP_ID, special_value, special_values

if TYPE_CHECKING:  # pragma: no cover
    from .modeling import BmfmRnaModel

__all__ = ["CellDataset", "PretrainingCollator", "RnaPretrainingModule", "focal_loss"]

#: Pretraining objectives :class:`RnaPretrainingModule` combines.
Objective = Literal["mlm", "wced", "labels"]
_OBJECTIVES: tuple[str, ...] = Objective.__args__


class CellDataset(torch.utils.data.Dataset):
    """Row indices of a CSR count matrix (items are ints; the collator does the work)."""

    def __init__(self, n_cells: int) -> None:
        self.n = int(n_cells)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int(i)


class PretrainingCollator:
    """Build pretraining batches from raw counts.

    Parameters
    ----------
    counts
        CSR cells x genes raw counts.
    column_token_ids
        Token id per column, -1 when dropped (``GeneMatchReport.column_token_ids``).
    vocab_size
        Gene vocabulary size (WCED target width).
    labels
        {label name: int array (n_cells,), -100 where unknown}.
    max_length
        Sequence length incl. CLS/SEP.
    expose_zeros
        Fill the sequence with zero-expression genes after the expressed ones (official).
    mlm
        Apply MLM masking (and return MLM targets).
    wced
        Return WCED targets (B, V).
    cls_ids
        Leading CLS token ids.
    records, cell_record
        Columns measured per record and the record index of each cell (when datasets with
        different gene panels are stacked); default: one record of every kept column.
    seed
        RNG seed (gene order, zero selection, masking).
    """

    def __init__(
        self,
        counts: sp.csr_matrix,
        column_token_ids: np.ndarray,
        vocab_size: int,
        *,
        labels: Mapping[str, np.ndarray] | None = None,
        max_length: int = 512,
        expose_zeros: bool = True,
        mlm: bool = False,
        wced: bool = True,
        mlm_probability: float = 0.15,
        mask_probability: float = 0.95,
        cls_ids: Sequence[int] = (CLS_ID,),
        records: Sequence[np.ndarray] | None = None,
        cell_record: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.counts = sp.csr_matrix(counts)
        self.col = np.asarray(column_token_ids, dtype=np.int64)
        # columns measured in each cell's record (kept genes); several records when datasets
        # with different gene panels are stacked in one matrix
        if records is None:
            records, cell_record = [np.flatnonzero(self.col >= 0)], None
        self.records = [np.asarray(r, dtype=np.int64) for r in records]
        self.cell_record = (np.zeros(self.counts.shape[0], dtype=np.int64) if cell_record is None
                            else np.asarray(cell_record, dtype=np.int64))
        self.vocab_size = int(vocab_size)
        self.labels = {k: np.asarray(v, dtype=np.int64) for k, v in (labels or {}).items()}
        self.max_length = int(max_length)
        self.expose_zeros = expose_zeros
        self.mlm = mlm
        self.wced = wced
        self.p_mlm = mlm_probability
        self.p_mask = mask_probability
        self.cls_ids = list(cls_ids)
        self.rng = np.random.default_rng(seed)

    def _cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.counts.indptr[i], self.counts.indptr[i + 1]
        cols = self.counts.indices[lo:hi]
        vals = self.counts.data[lo:hi].astype(np.float64)
        keep = (self.col[cols] >= 0) & (vals != 0)
        return cols[keep], vals[keep]

    def __call__(self, idx: Sequence[int]) -> dict[str, Any]:
        idx = [int(i) for i in idx]
        b, n_cls = len(idx), len(self.cls_ids)
        max_genes = self.max_length - n_cls - 1
        cells = [self._cell(i) for i in idx]
        batch_expressed = np.unique(np.concatenate([c for c, _ in cells])) if cells else np.array([], int)
        genes = np.full((b, self.max_length), PAD_ID, dtype=np.int64)
        expr = np.full((b, self.max_length), special_value(PAD_ID), dtype=np.float32)
        genes[:, :n_cls] = self.cls_ids
        expr[:, :n_cls] = special_values(self.cls_ids)
        lengths = np.zeros(b, dtype=np.int64)
        wced = np.full((b, self.vocab_size), -100.0, dtype=np.float32) if self.wced else None
        in_input = np.zeros((b, self.vocab_size), dtype=bool) if self.wced else None
        for r, (cols, vals) in enumerate(cells):
            record = self.records[self.cell_record[idx[r]]]
            norm = np.log1p(vals / (vals.sum() + 1.0) * 10000.0)
            perm = self.rng.permutation(len(cols))
            sel_cols, sel_vals = cols[perm][:max_genes], norm[perm][:max_genes]
            room = max_genes - len(sel_cols)
            if self.expose_zeros and room > 0:
                other = np.setdiff1d(batch_expressed, cols, assume_unique=True)
                other = np.intersect1d(other, record, assume_unique=True)
                rest = np.setdiff1d(record, np.union1d(batch_expressed, cols), assume_unique=True)
                zeros = np.concatenate([self.rng.permutation(other), self.rng.permutation(rest)])[:room]
                sel_cols = np.concatenate([sel_cols, zeros])
                sel_vals = np.concatenate([sel_vals, np.zeros(len(zeros))])
            n = len(sel_cols)
            genes[r, n_cls:n_cls + n] = self.col[sel_cols]
            expr[r, n_cls:n_cls + n] = sel_vals.astype(np.float32)
            genes[r, n_cls + n] = SEP_ID
            expr[r, n_cls + n] = special_value(SEP_ID)
            lengths[r] = n_cls + n + 1
            if wced is not None:
                wced[r, self.col[record]] = 0.0
                wced[r, self.col[cols]] = norm.astype(np.float32)
                in_input[r, self.col[sel_cols]] = True
        width = int(lengths.max()) if b else n_cls + 1
        genes, expr = genes[:, :width], expr[:, :width]
        mask = np.arange(width)[None, :] < lengths[:, None]
        out: dict[str, Any] = {}
        if self.mlm:
            eligible = mask.copy()
            eligible[:, :n_cls] = False
            eligible[np.arange(b), lengths - 1] = False
            gene_t = np.full_like(genes, -100)
            expr_t = np.full(expr.shape, -100.0, dtype=np.float32)
            for arr, tgt, mask_val in ((genes, gene_t, MASK_ID), (expr, expr_t, special_value(MASK_ID))):
                chosen = eligible & (self.rng.random(arr.shape) < self.p_mlm)
                tgt[chosen] = arr[chosen]
                replace = chosen & (self.rng.random(arr.shape) < self.p_mask)
                arr[replace] = mask_val
            out["mlm_gene_targets"] = torch.from_numpy(gene_t)
            out["mlm_expression_targets"] = torch.from_numpy(expr_t)
        out.update(genes=torch.from_numpy(genes), expressions=torch.from_numpy(expr),
                   attention_mask=torch.from_numpy(mask))
        if wced is not None:
            out["wced_targets"] = torch.from_numpy(wced)
            out["wced_in_input"] = torch.from_numpy(in_input)
        if self.labels:
            out["labels"] = {k: torch.from_numpy(v[idx]) for k, v in self.labels.items()}
        return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss over samples whose target is not -100 (0 when none)."""
    keep = target != -100
    if not keep.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[keep].float(), dim=-1)
    lp = logp.gather(1, target[keep].unsqueeze(1)).squeeze(1)
    return (-(1 - lp.exp()) ** gamma * lp).mean()


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred[mask], target[mask]) if mask.any() else pred.sum() * 0.0


def _masked_bce(logit: torch.Tensor, is_zero: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not mask.any():
        return logit.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logit[mask], is_zero[mask].float())


class RnaPretrainingModule(L.LightningModule):
    """MLM / WCED / multitask pretraining of a :class:`BmfmRnaModel`, for ``bt.train.fit``.

    Parameters
    ----------
    model
        The model to train (its config must have the heads the objectives need).
    objectives
        Any combination of ``"mlm"``, ``"wced"``, ``"labels"``.
    label_weights
        Loss weight per label (default 1; e.g. ``{"donor_id": 0.05}``).
    focal_gamma
        Focal-loss gamma of label heads.
    gene_loss_weight, is_zero_loss_weight
        MLM loss weights (official 0.7 and 1.5).
    learning_rate, weight_decay, betas, warmup_steps
        AdamW with linear warmup.

    Examples
    --------
    >>> module = RnaPretrainingModule(model, objectives=("wced", "labels"))  # doctest: +SKIP
    >>> bt.train.fit(module, loader, max_epochs=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: BmfmRnaModel,
        *,
        objectives: Sequence[Objective] = ("wced", "labels"),
        label_weights: Mapping[str, float] | None = None,
        focal_gamma: float = 2.0,
        gene_loss_weight: float = 0.7,
        is_zero_loss_weight: float = 1.5,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 100,
    ) -> None:
        super().__init__()
        bad = set(objectives) - set(_OBJECTIVES)
        if bad or not objectives:
            raise InputError(f"objectives must be a non-empty subset of {_OBJECTIVES}, got {objectives}")
        cfg = model.config
        if "wced" in objectives and cfg.wced is None:
            raise InputError("objective 'wced' needs a model config with a wced decode mode")
        if "mlm" in objectives and not cfg.mlm_decoders:
            raise InputError("objective 'mlm' needs MLM decoders (decode_modes token_scores/regression/is_zero)")
        if "labels" in objectives and not cfg.label_columns:
            raise InputError("objective 'labels' needs label_columns in the model config")
        self.model = model
        self.objectives = tuple(objectives)
        self.label_weights = dict(label_weights or {})
        self.focal_gamma = focal_gamma
        self.gene_w = gene_loss_weight
        self.zero_w = is_zero_loss_weight
        self.lr, self.wd, self.betas, self.warmup = learning_rate, weight_decay, betas, warmup_steps

    def losses(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Every loss term of a batch (unweighted terms are already weighted in ``loss``)."""
        heads = []
        if "labels" in self.objectives:
            heads.append("labels")
        if "mlm" in self.objectives:
            heads.append("mlm")
        out = self.model(batch["genes"], batch["expressions"], batch["attention_mask"], heads=heads)
        terms: dict[str, torch.Tensor] = {}
        total = out.last_hidden_state.new_zeros(())
        if "wced" in self.objectives:
            w = self.model.decode_wced(out.last_hidden_state[:, 0])
            tgt, inp = batch["wced_targets"], batch["wced_in_input"]
            present = tgt != -100
            for part, sel in (("input", present & inp), ("non_input", present & ~inp)):
                mse = _masked_mse(w.value, tgt, sel & (tgt > 0))
                bce = _masked_bce(w.is_zero, tgt == 0, sel)
                terms[f"wced_mse_{part}"], terms[f"wced_bce_{part}"] = mse, bce
                total = total + mse + bce
        if "mlm" in self.objectives:
            cfg = self.model.config
            gt, et = batch["mlm_gene_targets"], batch["mlm_expression_targets"]
            for name, (_field, mode) in cfg.mlm_decoders.items():
                y = out.mlm_logits[name]
                if mode == "token_scores":
                    loss = F.cross_entropy(y.reshape(-1, y.shape[-1]), gt.reshape(-1), ignore_index=-100) \
                        if (gt != -100).any() else y.sum() * 0.0
                    terms["mlm_genes_ce"] = loss
                    total = total + self.gene_w * loss
                elif mode == "regression":
                    loss = _masked_mse(y, et, (et != -100) & (et > 0))
                    terms["mlm_expressions_mse"] = loss
                    total = total + loss
                else:
                    loss = _masked_bce(y, et == 0, et != -100)
                    terms["mlm_expressions_is_zero_bce"] = loss
                    total = total + self.zero_w * loss
        if "labels" in self.objectives:
            for name, logits in out.label_logits.items():
                if name not in batch.get("labels", {}):
                    continue
                loss = focal_loss(logits, batch["labels"][name], self.focal_gamma)
                terms[f"{name}_focal"] = loss
                total = total + self.label_weights.get(name, 1.0) * loss
                keep = batch["labels"][name] != -100
                if keep.any():
                    acc = (logits[keep].argmax(-1) == batch["labels"][name][keep]).float().mean()
                    terms[f"{name}_accuracy"] = acc.detach()
        terms["loss"] = total
        return terms

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        bs = int(batch["genes"].shape[0])
        self.log("train_loss", terms["loss"], prog_bar=True, batch_size=bs)
        for k, v in terms.items():
            if k != "loss":
                self.log(f"train_{k}", v, batch_size=bs)
        return terms["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        terms = self.losses(batch)
        bs = int(batch["genes"].shape[0])
        self.log("val_loss", terms["loss"], prog_bar=True, batch_size=bs)
        for k, v in terms.items():
            if k != "loss":
                self.log(f"val_{k}", v, batch_size=bs)

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in n or "embeddings" in n else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.wd},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=self.lr, betas=self.betas, eps=1e-8)
        warm = max(1, int(self.warmup))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
