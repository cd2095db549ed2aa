"""Fine-tuning BMFM-RNA for cell annotation: the recipe, the Lightning module and model surgery.

Why a small transformer fine-tuned on ~100 cells used to collapse, and what this recipe does
about it:

* **Budget counted in epochs.** 10 epochs of 90 cells at batch 32 are 30 optimizer steps, most of
  them warm-up; early stopping on a 10-cell validation set then ends the run after a handful of
  steps on noise. Here the budget is counted in optimizer steps with a floor that does not
  depend on the data size (``min_steps``), warm-up then cosine decay, and early stopping only
  when the validation set is large enough to mean something (else a fixed budget, said in the
  log and in ``model.history.attrs["recipe"]``).
* **A head that starts from nothing the encoder can give.** A linear probe on the pooler of a
  model that never saw the tissue is weak, and the gradients through a randomly started head
  are noise. The head therefore also sees an *expression path*: a bag-of-genes linear layer over
  the cell's log-normalised input expression (the genes the model reads), next to the pooler
  features. Both start from one logistic regression fitted on the training cells (PCA(50) of the
  standardised input expression plus the standardised pooler features, folded back into plain
  linear weights), so fine-tuning starts where PCA + logistic regression ends and the transformer
  only has to add to it (LP-FT). How much that regression leans on the pooler features (their
  scale against the PCA block) is chosen by cross-validation on the training cells, except on
  cells the model was pretrained on (:mod:`~biomed_toolkit.rna.seen_cells`): its features of
  those are memorised, the cross-validation overrates them (pbmc68k's 491 training cells:
  cross-validated 0.91 with weight 1, 0.67 on held-out cells, where weight 0 scores 0.73), and
  the smallest non-zero weight (0.25) is used.
* **The head stays where the probe put it.** Trained on from its probe start (learning rate
  1e-3, 300 steps, 90 cells), the head fits the training cells ever closer and loses on new ones
  (held-out macro-F1 0.967 -> 0.861 on oligodendroglioma, 0.538 -> 0.529 on pbmc68k, the same
  with the encoder frozen); the encoder tuned beneath the fixed head kept 0.967. So by default
  the annotation head and the expression path keep their probe weights and the encoder is tuned
  beneath them (``head_learning_rate`` and ``path_learning_rate`` reach both).
* **Rare types.** The focal loss is weighted by inverse class frequency (``class_weights``).
* **Confidence.** A temperature fitted on the validation cells after training makes
  ``annotate``'s probabilities calibrated (stored with the model) when there are enough of them
  (``MIN_CALIBRATION_CELLS``). On ten validation cells one confident mistake drives the fitted
  temperature to ~2.8 and the held-out ECE from 0.06 (the model's own probabilities) to 0.28
  (pbmc68k, 100 training cells), so below that size the temperature is fitted on the probe
  start's out-of-fold predictions of the training cells instead (the head keeps its probe
  weights, so the probe's calibration is the model's): held-out ECE of the probe start on
  oligodendroglioma, 100 cells, 0.10 -> 0.02 (T ~ 0.4: the regression was under-confident).

The expression path and the temperature of each label head live in ``model.label_extras``
and are written next to the weights (``label_heads.safetensors``) by ``save_pretrained``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..core.errors import CheckpointError, InputError
from ..core.finetune import finetune_doc
from ..core.log import get_logger, timed
from .seen_cells import seen_in_pretraining

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from ..core.device import Devices
    from .modeling import BmfmRnaModel

log = get_logger(__name__)

__all__ = ["AnnotationModule", "ExpressionPath", "ProbeCV", "ProbeStart", "Recipe",
           "choose_pooler_weight", "cross_validate_probe", "finetune", "plan_recipe",
           "pooler_features", "probe_start", "validation_split"]

EXTRAS_NAME = "label_heads.safetensors"
#: validation cells needed before early stopping may end a run (and per class)
MIN_VAL_CELLS = 100
MIN_VAL_PER_CLASS = 5
#: validation cells needed before a fitted temperature replaces the model's own probabilities
MIN_CALIBRATION_CELLS = 50
#: validation share of ``val_fraction="auto"`` (when it gives MIN_CALIBRATION_CELLS cells)
AUTO_VAL_FRACTION = 0.1
#: classes with fewer labelled cells than this give none to the validation split (a type of 3
#: cells that lends one to validation loses a third of what the head can learn it from)
MIN_CELLS_TO_VALIDATE = 10


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------
def label_codes(adata: AnnData, key: str, what: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes of ``obs[key]`` (-100 where missing) and the class names, sorted.

    Raises
    ------
    InputError
        For a missing column, fewer than two classes, or a column that looks continuous rather
        than categorical: floats with non-integer values, or more classes than half the labelled
        cells (a classification head would get about one cell per class).
    """
    if key not in adata.obs:
        raise InputError(f"{what} {key!r} not in adata.obs (columns: {list(adata.obs.columns)})")
    col = adata.obs[key]
    values = col.dropna()
    n_distinct = int(values.nunique())
    fix = (f"bin it into classes first (e.g. adata.obs['{key}_bin'] = pd.cut(adata.obs[{key!r}], "
           "bins=5)) or pass a categorical column")
    frac = values[values != np.round(values)] if col.dtype.kind == "f" else values[:0]
    if len(frac):
        raise InputError(
            f"{what} adata.obs[{key!r}] holds continuous values ({col.dtype}, {n_distinct:,} "
            f"distinct, e.g. {float(frac.iloc[0]):.4g}), which cannot be class labels: {fix}")
    if n_distinct > max(2, len(values) // 2):
        raise InputError(
            f"{what} adata.obs[{key!r}] has {n_distinct:,} distinct values on {len(values):,} "
            "labelled cells (more classes than half the cells), so it is not a categorical label "
            f"to learn: {fix}, or merge rare classes")
    if isinstance(col.dtype, pd.CategoricalDtype):
        classes = [str(c) for c in col.cat.categories if (col == c).any()]
    else:
        classes = sorted(col.dropna().astype(str).unique().tolist())
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index.get(str(v), -100) if pd.notna(v) else -100 for v in col], dtype=np.int64)
    if len(classes) < 2:
        raise InputError(f"{what} adata.obs[{key!r}] needs at least two classes, found {classes}")
    return codes, classes


def validation_split(codes: np.ndarray, labelled: np.ndarray, n_val: int, *,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows (sorted) of the ``labelled`` rows: ``n_val`` validation cells
    drawn stratified from the classes with at least :data:`MIN_CELLS_TO_VALIDATE` cells; the
    cells of rarer classes all train (logged)."""
    from sklearn.model_selection import train_test_split

    per_class = np.bincount(codes[labelled])
    rare = per_class[codes[labelled]] < MIN_CELLS_TO_VALIDATE
    pool = labelled[~rare]
    n_val = min(n_val, len(pool) // 2)
    if not n_val:
        return np.sort(labelled), np.array([], dtype=np.int64)
    if rare.any():
        n_rare = int(np.count_nonzero((per_class > 0) & (per_class < MIN_CELLS_TO_VALIDATE)))
        log.info(f"    the {int(rare.sum())} cells of {n_rare} classes with fewer than "
                 f"{MIN_CELLS_TO_VALIDATE} cells all train (none held out for validation)")
    strat = codes[pool]
    kept = np.bincount(strat)
    ok_strat = kept[kept > 0].min() >= 2 and n_val >= np.count_nonzero(kept)
    tr, va = train_test_split(pool, test_size=n_val, random_state=seed,
                              stratify=strat if ok_strat else None)
    return np.sort(np.r_[tr, labelled[rare]]), np.sort(va)


# --------------------------------------------------------------------------------------------
# model surgery
# --------------------------------------------------------------------------------------------
def with_heads(base: BmfmRnaModel, heads: list[Any], replaced: set[str]) -> BmfmRnaModel:
    """A copy of ``base`` whose label heads are the kept old ones plus ``heads``."""
    from .configuration import BmfmRnaConfig
    from .modeling import BmfmRnaModel

    cfg_dict = base.config.to_dict()
    kept = [c for c in base.config.label_columns if c.name not in replaced]
    cfg_dict["label_columns"] = [c.to_dict() for c in [*kept, *heads]]
    cfg = BmfmRnaConfig.from_dict(cfg_dict)
    new = BmfmRnaModel(cfg)
    state = {k: v for k, v in base.state_dict().items()
             if not any(f"label_decoders.{name}." in k for name in replaced)}
    result = new.load_state_dict(state, strict=False)
    fresh = {f"label_decoders.{h.name}." for h in heads}
    bad_missing = [k for k in result.missing_keys if not any(f in k for f in fresh)]
    if bad_missing or result.unexpected_keys:
        raise CheckpointError(f"could not carry weights over: missing {bad_missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    new.tokenizer = base.tokenizer
    new.pooling = getattr(base, "pooling", cfg.pooling)
    new.label_dict = {k: dict(v) for k, v in (base.label_dict or {}).items() if k not in replaced}
    new.label_extras = {k: v for k, v in getattr(base, "label_extras", {}).items()
                        if k not in replaced}
    new.pretraining_cells = getattr(base, "pretraining_cells", None)
    return new


def _head_linear(model: BmfmRnaModel, label: str) -> torch.nn.Linear:
    head = model.cls.label_predictions.predictions.label_decoders[label].decoder
    return head if isinstance(head, torch.nn.Linear) else head[-1]


# --------------------------------------------------------------------------------------------
# the expression path: a bag-of-genes linear layer over the model's input genes
# --------------------------------------------------------------------------------------------
@dataclass
class ExpressionPath:
    """Linear logits over log-normalised expression of the genes a label head reads.

    ``gene_ids`` (G,) model token ids; ``weight`` (G, C); ``bias`` (C,); ``temperature`` divides
    the head's total logits (pooler head + this path) before the softmax.
    """

    gene_ids: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    temperature: float = 1.0

    def features(self, counts: sp.csr_matrix, column_token_ids: np.ndarray) -> sp.csr_matrix:
        """(cells, G) ``log1p(count / total * 1e4)``, total over the path's genes of each cell."""
        return expression_features(counts, column_token_ids, self.gene_ids)

    def logits(self, counts: sp.csr_matrix, column_token_ids: np.ndarray) -> np.ndarray:
        x = self.features(counts, column_token_ids)
        return np.asarray(x @ self.weight.astype(np.float64)) + self.bias[None, :]


def expressed_gene_ids(counts: sp.csr_matrix, column_token_ids: np.ndarray) -> np.ndarray:
    """Sorted model token ids of the genes with a count in some cell (an expression path's genes)."""
    read = np.unique(np.asarray(column_token_ids)[np.unique(sp.csr_matrix(counts).indices)])
    return read[read >= 0]


def expression_features(counts: Any, column_token_ids: np.ndarray,
                        gene_ids: np.ndarray) -> sp.csr_matrix:
    """Counts summed per model gene in ``gene_ids`` order, log-normalised (1e4, log1p)."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    pos = {int(g): i for i, g in enumerate(np.asarray(gene_ids))}
    cols = np.array([pos.get(int(t), -1) for t in np.asarray(column_token_ids)], dtype=np.int64)
    keep = np.flatnonzero(cols >= 0)
    m = sp.csr_matrix((np.ones(len(keep)), (keep, cols[keep])), shape=(counts.shape[1], len(pos)))
    x = (counts @ m).tocsr()
    total = np.asarray(x.sum(axis=1)).ravel()
    x = sp.diags(1e4 / np.where(total > 0, total, 1.0)) @ x
    x = x.tocsr()
    x.data = np.log1p(x.data)
    return x


def save_label_extras(model: BmfmRnaModel, folder: str | Path) -> None:
    """Write ``model.label_extras`` (expression paths, temperatures) to ``label_heads.safetensors``."""
    from safetensors.numpy import save_file

    extras: dict[str, ExpressionPath] = getattr(model, "label_extras", None) or {}
    if not extras:
        return
    tensors: dict[str, np.ndarray] = {}
    for name, p in extras.items():
        tensors[f"{name}.gene_ids"] = np.asarray(p.gene_ids, dtype=np.int64)
        tensors[f"{name}.weight"] = np.ascontiguousarray(p.weight, dtype=np.float32)
        tensors[f"{name}.bias"] = np.asarray(p.bias, dtype=np.float32)
        tensors[f"{name}.temperature"] = np.asarray([p.temperature], dtype=np.float32)
    save_file(tensors, str(Path(folder) / EXTRAS_NAME))


def load_label_extras(model: BmfmRnaModel, folder: str | Path) -> None:
    """Read ``label_heads.safetensors`` (when present) into ``model.label_extras``."""
    path = Path(folder) / EXTRAS_NAME
    model.label_extras = {}
    if not path.is_file():
        return
    from safetensors.numpy import load_file

    z = load_file(str(path))
    for name in sorted({k.rsplit(".", 1)[0] for k in z}):
        model.label_extras[name] = ExpressionPath(
            gene_ids=z[f"{name}.gene_ids"], weight=z[f"{name}.weight"], bias=z[f"{name}.bias"],
            temperature=float(z[f"{name}.temperature"][0]))


def calibrated_probabilities(model: BmfmRnaModel, label: str, probabilities: np.ndarray, adata: Any,
                             column_token_ids: np.ndarray, *, layer: str | None = None,
                             chunk_size: int = 4096) -> np.ndarray:
    """Head probabilities combined with the label's expression path and temperature.

    ``probabilities`` are the pooler head's softmax outputs (NaN rows for empty cells); their log
    equals the head logits up to a per-cell constant, so adding the expression path logits and
    dividing by the temperature gives the fine-tuned model's probabilities.
    """
    from .io import get_matrix, to_csr

    path: ExpressionPath | None = (getattr(model, "label_extras", None) or {}).get(label)
    if path is None:
        return probabilities
    out = np.array(probabilities, dtype=np.float32, copy=True)
    matrix = get_matrix(adata, layer)
    for lo in range(0, adata.n_obs, chunk_size):
        hi = min(lo + chunk_size, adata.n_obs)
        p = probabilities[lo:hi]
        ok = np.isfinite(p).all(axis=1)
        z = np.log(np.clip(p, 1e-30, None)) + path.logits(to_csr(matrix[lo:hi]), column_token_ids)
        out[lo:hi] = np.where(ok[:, None], _softmax(z / path.temperature), np.nan)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, prior: float = 1.0) -> float:
    """Temperature minimising the validation NLL plus ``prior * log(T)^2`` (a pull to 1 that
    matters only when there are few validation cells)."""
    ok = y >= 0
    logits, y = logits[ok], y[ok]
    if len(y) == 0:
        return 1.0
    grid = np.exp(np.linspace(-2.5, 3.0, 441))
    best, best_t = np.inf, 1.0
    for t in grid:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        nll = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).sum()
        obj = nll + prior * math.log(t) ** 2
        if obj < best:
            best, best_t = obj, float(t)
    return best_t


# --------------------------------------------------------------------------------------------
# the recipe
# --------------------------------------------------------------------------------------------
@dataclass
class Recipe:
    """The fine-tuning budget chosen for a data set, and why (stored in the history)."""

    steps: int
    steps_per_epoch: int
    warmup_steps: int
    min_steps: int
    early_stopping: bool
    val_check_every: int
    patience: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_recipe(n_train: int, n_val: int, n_classes: int, *, batch_size: int,
                max_epochs: int | None = None, max_steps: int | None = None,
                min_steps: int = 300, early_stopping: bool | dict[str, Any] | str = "auto",
                ) -> Recipe:
    """Choose the number of optimizer steps, warm-up and whether early stopping may end the run.

    Without ``max_epochs``/``max_steps``: 20 epochs, at least ``min_steps`` steps and at most
    5,000. Early stopping (``"auto"``) only with at least 100 validation cells and 5 per class;
    it never ends a run before ``min_steps``.
    """
    spe = max(1, math.ceil(n_train / batch_size))
    if max_epochs is None:
        spe = max(spe, 100)  # an "epoch" of at least 100 steps (see finetune)
    if max_steps is not None:
        steps, why = int(max_steps), f"max_steps={max_steps} as asked"
    elif max_epochs is not None:
        steps, why = int(max_epochs) * spe, f"max_epochs={max_epochs} as asked"
    else:
        full = 20 * math.ceil(n_train / batch_size)
        steps = int(min(5000, max(min_steps, full)))
        why = (f"20 passes over the training cells ({steps} steps)" if min_steps <= full <= 5000
               else f"{steps} steps (20 passes would be {full}; the budget stays within "
               f"[{min_steps}, 5000])")
    big_enough = n_val >= max(MIN_VAL_CELLS, MIN_VAL_PER_CLASS * n_classes)
    if early_stopping == "auto":
        stop = big_enough
        why += ("; early stopping on val_loss" if stop else
                f"; fixed budget: {n_val} validation cells are too few to stop on (early "
                f"stopping needs >= {max(MIN_VAL_CELLS, MIN_VAL_PER_CLASS * n_classes)})")
    else:
        stop = bool(early_stopping) and n_val > 0
        why += "; early stopping on val_loss as asked" if stop else "; no early stopping"
    floor = min(steps, min_steps) if stop else 0
    return Recipe(steps=max(1, steps), steps_per_epoch=spe,
                  warmup_steps=max(1, min(200, steps // 10)), min_steps=floor,
                  early_stopping=stop, val_check_every=max(1, min(spe, steps // 20) if stop
                                                           else steps // 10),
                  patience=5, reason=why)


def class_weights(codes: np.ndarray, n_classes: int, power: float = 0.5) -> np.ndarray:
    """Per-class loss weights ``(n / (C n_c))^power`` (mean 1 over training cells)."""
    counts = np.bincount(codes[codes >= 0], minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, (counts.sum() / (n_classes * np.maximum(counts, 1))) ** power, 0.0)
    mean = (w[codes[codes >= 0]]).mean()
    return (w / mean).astype(np.float32)


def weighted_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss over samples whose target is not -100, weighted per class (0 when none)."""
    keep = target != -100
    if not keep.any():
        return logits.sum() * 0.0
    t = target[keep]
    logp = F.log_softmax(logits[keep].float(), dim=-1)
    lp = logp.gather(1, t.unsqueeze(1)).squeeze(1)
    loss = -(1 - lp.exp()) ** gamma * lp
    if weight is None:
        return loss.mean()
    w = weight[t]
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


# --------------------------------------------------------------------------------------------
# Lightning module and batches
# --------------------------------------------------------------------------------------------
class AnnotationCollator:
    """Model batches (:class:`~.objectives.PretrainingCollator`) plus the expression-path input."""

    def __init__(self, base: Any, features: sp.csr_matrix | None) -> None:
        self.base = base
        self.features = features

    def __call__(self, idx: list[int]) -> dict[str, Any]:
        out = self.base(idx)
        if self.features is not None:
            x = self.features[np.asarray(idx, dtype=np.int64)].toarray().astype(np.float32)
            out["expression_path"] = torch.from_numpy(x)
        return out


class AnnotationModule(L.LightningModule):
    """Fine-tunes label heads (+ expression path) of a :class:`BmfmRnaModel` with focal loss.

    Parameters
    ----------
    model
        The model with its label heads (the first is ``label``).
    label
        Head trained for annotation; other heads (e.g. an adversarial batch head) join the
        loss with ``label_weights``.
    path_weight, path_bias
        Initial expression-path weights (G, C) and bias (C), or None for no path.
    learning_rate, head_learning_rate, path_learning_rate, weight_decay
        AdamW: encoder, ``label`` head and expression-path learning rates (0: kept fixed).
    aux_head_learning_rate
        AdamW learning rate of the other heads (e.g. the adversarial batch head).
    steps, warmup_steps
        Linear warm-up then cosine decay to 10% over ``steps`` optimizer steps.
    class_weights
        Per-class loss weights of ``label`` (None: unweighted).
    """

    def __init__(self, model: BmfmRnaModel, label: str, *, path_weight: np.ndarray | None = None,
                 path_bias: np.ndarray | None = None, learning_rate: float = 1e-4,
                 head_learning_rate: float | None = None, path_learning_rate: float = 0.0,
                 aux_head_learning_rate: float = 1e-3, weight_decay: float = 0.01,
                 steps: int = 1000, warmup_steps: int = 100, focal_gamma: float = 2.0,
                 class_weights: np.ndarray | None = None,
                 label_weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.model = model
        self.label = label
        self.path_weight = (None if path_weight is None else
                            torch.nn.Parameter(torch.as_tensor(path_weight, dtype=torch.float32)))
        self.path_bias = (None if path_bias is None else
                          torch.nn.Parameter(torch.as_tensor(path_bias, dtype=torch.float32)))
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw)
        self.lr = learning_rate
        self.head_lr = head_learning_rate if head_learning_rate is not None else learning_rate
        # Adam moves every one of the path's thousands of gene weights by ~lr per step, so the
        # logits move by ~lr x (genes expressed): the path stays at its probe start by default
        self.path_lr = float(path_learning_rate)
        self.aux_lr = float(aux_head_learning_rate)
        for p in (self.path_weight, self.path_bias):
            if p is not None and self.path_lr <= 0:
                p.requires_grad_(False)
        if self.head_lr <= 0:
            for n, p in model.named_parameters():
                if self._is_label_head(n):
                    p.requires_grad_(False)
        self.wd = weight_decay
        self.steps, self.warmup = int(steps), int(warmup_steps)
        self.gamma = focal_gamma
        self.label_weights = dict(label_weights or {})
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _is_label_head(self, name: str) -> bool:
        return f"label_decoders.{self.label}." in name

    def logits(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(batch["genes"], batch["expressions"], batch["attention_mask"],
                         heads=["labels"])
        logits = dict(out.label_logits)
        if self.path_weight is not None and "expression_path" in batch:
            logits[self.label] = (logits[self.label] + batch["expression_path"] @ self.path_weight
                                  + self.path_bias)
        return logits

    def _terms(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(batch)
        total = next(iter(logits.values())).new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        for name, z in logits.items():
            y = batch["labels"].get(name)
            if y is None:
                continue
            w = self.class_weights if name == self.label else None
            loss = weighted_focal_loss(z, y, self.gamma, w)
            total = total + self.label_weights.get(name, 1.0) * loss
            keep = y != -100
            if keep.any():
                terms[f"{name}_accuracy"] = (z[keep].argmax(-1) == y[keep]).float().mean().detach()
        return total, {**terms, "_logits": logits[self.label]}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, terms = self._terms(batch)
        bs = int(batch["genes"].shape[0])
        self.log("train_loss", loss, prog_bar=True, batch_size=bs)
        for k, v in terms.items():
            if not k.startswith("_"):
                self.log(f"train_{k}", v, batch_size=bs)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, terms = self._terms(batch)
        bs = int(batch["genes"].shape[0])
        self.log("val_loss", loss, prog_bar=True, batch_size=bs)
        self._val.append((terms["_logits"].argmax(-1).cpu(), batch["labels"][self.label].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        from sklearn.metrics import f1_score

        pred = torch.cat([p for p, _ in self._val]).numpy()
        true = torch.cat([t for _, t in self._val]).numpy()
        self._val.clear()
        keep = true >= 0
        if keep.any():
            self.log("val_accuracy", float((pred[keep] == true[keep]).mean()))
            self.log("val_macro_f1", float(f1_score(true[keep], pred[keep], average="macro")))

    def configure_optimizers(self) -> Any:
        groups: dict[str, list[torch.nn.Parameter]] = {"enc": [], "enc_nd": [], "head": [],
                                                       "aux": []}
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if self._is_label_head(n):
                groups["head"].append(p)
            elif "label_decoders" in n:
                groups["aux"].append(p)
            elif p.ndim < 2 or "LayerNorm" in n or "embeddings" in n:
                groups["enc_nd"].append(p)
            else:
                groups["enc"].append(p)
        path = [p for p in (self.path_weight, self.path_bias) if p is not None and self.path_lr > 0]
        params = [{"params": groups["enc"], "weight_decay": self.wd, "lr": self.lr},
                  {"params": groups["enc_nd"], "weight_decay": 0.0, "lr": self.lr},
                  {"params": groups["head"], "weight_decay": 0.0, "lr": self.head_lr},
                  {"params": groups["aux"], "weight_decay": 0.0, "lr": self.aux_lr},
                  {"params": path, "weight_decay": 0.0, "lr": self.path_lr}]
        opt = torch.optim.AdamW([g for g in params if g["params"]], betas=(0.9, 0.99), eps=1e-8)
        return {"optimizer": opt, "lr_scheduler": {
            "scheduler": warmup_cosine(opt, self.warmup, self.steps), "interval": "step"}}


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, *,
                  floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warmup_steps``, then cosine decay to
    ``floor`` times the peak learning rate at ``total_steps``."""
    warm, total = max(1, int(warmup_steps)), max(2, int(total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# linear-probe start (LP-FT)
# --------------------------------------------------------------------------------------------
#: weights of the pooler block tried next to the expression path's PCA in the probe start
POOLER_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
#: training cells the cross-validation of the pooler weight looks at (a stratified sample)
MAX_CV_CELLS = 2000
#: share of training cells found in the model's pretraining set above which the pooler weight
#: is not cross-validated (the encoder's features of memorised cells overrate it, see
#: :mod:`~biomed_toolkit.rna.seen_cells`); the smallest non-zero weight is used instead
MAX_SEEN_FRACTION = 0.1
SEEN_POOLER_WEIGHT = min(w for w in POOLER_WEIGHTS if w > 0)


@dataclass
class _Block:
    """One linear block of probe features: ``features = inputs @ a.T + shift``."""

    kind: Literal["path", "head"]
    a: np.ndarray  # (k, G) or (H, H)
    shift: np.ndarray  # (k,)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return inputs @ self.a.T + self.shift


def _probe_blocks(x: np.ndarray | None, pooled: np.ndarray | None, pooler_weight: float,
                  n_components: int, seed: int) -> list[_Block]:
    """Blocks fitted on the training cells: PCA of the standardised path input, and the pooler
    features centred, given one scale for the whole block and multiplied by ``pooler_weight``."""
    from sklearn.decomposition import PCA

    blocks = []
    if x is not None:
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        k = int(min(n_components, x.shape[0] - 1, x.shape[1]))
        pca = PCA(k, random_state=seed).fit((x - mu) / sd)
        a = pca.components_ / sd[None, :]
        # z = ((x - mu) / sd - m) @ P.T  ->  linear in x
        blocks.append(_Block("path", a, -a @ mu - pca.components_ @ pca.mean_))
    if pooled is not None and pooler_weight > 0:
        # one scale for the whole block, not per dimension: a (near-)constant pooler dimension
        # divided by its tiny spread would give the head huge weights that any change of the
        # encoder (or dropout) turns into huge logits
        # (a random encoder's pooler is near-constant: its spread is floored at a quarter of
        # the features' size, so its weights stay bounded)
        mu_p = pooled.mean(axis=0)
        spread = float(np.sqrt(((pooled - mu_p) ** 2).mean()))
        sd_p = max(spread, 0.25 * float(np.sqrt((pooled ** 2).mean())), 1e-3) / pooler_weight
        blocks.append(_Block("head", np.eye(pooled.shape[1]) / sd_p, -mu_p / sd_p))
    return blocks


def _probe_features(blocks: list[_Block], x: np.ndarray | None,
                    pooled: np.ndarray | None) -> np.ndarray:
    return np.hstack([blk(x if blk.kind == "path" else pooled) for blk in blocks])


@dataclass
class ProbeCV:
    """Stratified k-fold cross-validation of the probe start on the training cells."""

    #: mean macro-F1 over the folds, per pooler weight tried
    scores: dict[float, float]
    #: rows of the training cells that took part (a stratified sample of at most MAX_CV_CELLS)
    rows: np.ndarray
    #: out-of-fold log-probabilities (len(rows), n_classes), per pooler weight
    log_proba: dict[float, np.ndarray]


def cross_validate_probe(x: np.ndarray | None, pooled: np.ndarray | None, y: np.ndarray,
                         weights: tuple[float, ...] = POOLER_WEIGHTS, *, n_components: int = 50,
                         seed: int = 0) -> ProbeCV | None:
    """Out-of-fold macro-F1 and log-probabilities of the probe start for each pooler weight.

    k = min(5, smallest class) folds over at most :data:`MAX_CV_CELLS` training cells. A class of
    a single cell cannot be held out: its cell is in every fold's fit and gets no out-of-fold
    prediction (it is not in ``rows``). None without both blocks or when fewer than two classes
    have two cells or more.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, train_test_split

    idx = np.arange(len(y))
    if len(idx) > MAX_CV_CELLS:
        counts = np.bincount(y)
        idx = train_test_split(idx, train_size=MAX_CV_CELLS, random_state=seed,
                               stratify=y if counts[counts > 0].min() >= 2 else None)[0]
    single = np.bincount(y[idx])[y[idx]] < 2
    always_fit, idx = idx[single], idx[~single]
    counts = np.bincount(y[idx])
    counts = counts[counts > 0]
    if x is None or pooled is None or len(counts) < 2:
        return None
    n_classes = int(y.max()) + 1
    folds = list(StratifiedKFold(int(min(5, counts.min())), shuffle=True,
                                 random_state=seed).split(idx, y[idx]))
    f1: dict[float, list[float]] = {float(w): [] for w in weights}
    oof = {w: np.full((len(idx), n_classes), -30.0) for w in f1}
    for fit, held in folds:
        rows_fit, rows_held = np.r_[idx[fit], always_fit], idx[held]
        # the blocks do not depend on the weight (it only scales the pooler block): fit them once
        path, head = _probe_blocks(x[rows_fit], pooled[rows_fit], 1.0, n_components, seed)
        z_fit, z_held = path(x[rows_fit]), path(x[rows_held])
        p_fit, p_held = head(pooled[rows_fit]), head(pooled[rows_held])
        for w in f1:
            a = np.hstack([z_fit, w * p_fit]) if w > 0 else z_fit
            b = np.hstack([z_held, w * p_held]) if w > 0 else z_held
            clf = LogisticRegression(max_iter=3000, C=1.0, random_state=seed).fit(a, y[rows_fit])
            f1[w].append(f1_score(y[rows_held], clf.predict(b), average="macro"))
            oof[w][np.ix_(held, clf.classes_)] = clf.predict_log_proba(b)
    return ProbeCV({w: float(np.mean(v)) for w, v in f1.items()}, idx, oof)


def choose_pooler_weight(x: np.ndarray | None, pooled: np.ndarray | None, y: np.ndarray, *,
                         weights: tuple[float, ...] = POOLER_WEIGHTS, n_components: int = 50,
                         seed: int = 0) -> tuple[float, dict[float, float]]:
    """How much the probe start leans on the encoder: the weight of the pooler block next to
    the PCA of the expression path, chosen by cross-validation on the training cells.

    The probe's logistic regression penalises every feature alike, so the scale of the pooler
    block decides its share. A model that never saw the tissue gives features weaker than PCA of
    the expression, which then only add noise (oligodendroglioma, 100 cells: 0.970 macro-F1 with
    weight 1, 0.985 with 0.25); where the encoder's features are good they should count (pbmc68k:
    0.553 with 0 against 0.615 with 1). Stratified k-fold macro-F1 (:func:`cross_validate_probe`)
    picks the weight; ties go to the larger weight. Without both blocks, or with fewer than two
    classes of two cells or more, the weight is 1.

    Returns the weight and the cross-validated macro-F1 of every weight tried.
    """
    cv = cross_validate_probe(x, pooled, y, weights, n_components=n_components, seed=seed)
    return _best_weight(cv)


def _best_weight(cv: ProbeCV | None) -> tuple[float, dict[float, float]]:
    if cv is None:
        return 1.0, {}
    best = max(cv.scores.values())
    return max(w for w, s in cv.scores.items() if s >= best - 1e-9), cv.scores


def probe_init(model: BmfmRnaModel, label: str, x_path: sp.csr_matrix | np.ndarray | None,
               pooled: np.ndarray | None, y: np.ndarray, n_classes: int, *, n_components: int = 50,
               pooler_weight: float = 1.0, seed: int = 0
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Fit one logistic regression on [PCA of standardised path input, centred and scaled pooler
    times ``pooler_weight``] of the training cells and fold it into the head's weights and the
    expression path.

    Returns the path's (weight (G, C), bias (C,)) or (None, None) without a path; the head's
    Linear layer is written in place (zero where the pooler block is left out). Classes absent
    from training get a bias of -10.
    """
    from sklearn.linear_model import LogisticRegression

    x = x_path.toarray() if sp.issparse(x_path) else x_path
    blocks = _probe_blocks(x, pooled, pooler_weight, n_components, seed)
    if not blocks or len(np.unique(y)) < 2:
        return None, None
    feats = _probe_features(blocks, x, pooled)
    clf = LogisticRegression(max_iter=3000, C=1.0, random_state=seed).fit(feats, y)
    coef = clf.coef_ if len(clf.classes_) > 2 else np.r_[-clf.coef_, clf.coef_] / 2
    icpt = clf.intercept_ if len(clf.classes_) > 2 else np.r_[-clf.intercept_, clf.intercept_] / 2
    full_coef = np.zeros((n_classes, feats.shape[1]))
    full_b = np.full(n_classes, -10.0)
    full_coef[clf.classes_], full_b[clf.classes_] = coef, icpt
    # the logits are path + head: one total bias, carried by the path when there is one
    path_w = path_b = None
    bias, col = full_b, 0
    lin = _head_linear(model, label)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        for blk in blocks:
            part = full_coef[:, col:col + blk.a.shape[0]]  # (C, k)
            col += blk.a.shape[0]
            w = part @ blk.a  # (C, G) or (C, H)
            bias = bias + part @ blk.shift
            if blk.kind == "path":
                path_w = w.T.astype(np.float32)
            else:
                lin.weight.copy_(torch.as_tensor(w, dtype=lin.weight.dtype))
        if path_w is None:
            lin.bias.copy_(torch.as_tensor(bias, dtype=lin.bias.dtype))
        else:
            path_b = bias.astype(np.float32)
    return path_w, path_b


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------

@dataclass
class ProbeStart:
    """What the linear-probe start of :func:`probe_start` chose, and why."""

    #: share of the pooler block next to the PCA of the expression path
    pooler_weight: float
    #: cross-validated macro-F1 per pooler weight tried ({} when it was not cross-validated)
    cv_scores: dict[float, float]
    #: training cells that were in the model's pretraining (None: the model lists none)
    n_seen: int | None
    #: the expression path's (G, C) weight and (C,) bias, or None without a path
    path_weight: np.ndarray | None
    path_bias: np.ndarray | None
    #: temperature fitted on the out-of-fold predictions (None when not asked or not possible)
    temperature: float | None


def pooler_features(model: BmfmRnaModel, adata: AnnData, **kwargs: Any) -> np.ndarray | None:
    """The pooler output of every cell (float64, NaN as 0), or None for a model without pooler.
    ``kwargs`` go to :func:`~biomed_toolkit.rna.inference.run_inference`."""
    from .inference import run_inference

    if model.backbone.pooler is None:
        return None
    res = run_inference(model, adata, embeddings=True, pooling="pooler", progress=False, **kwargs)
    return np.nan_to_num(res.embeddings.astype(np.float64))


def probe_start(model: BmfmRnaModel, label: str, x: np.ndarray | None, pooled: np.ndarray | None,
                y: np.ndarray, n_classes: int, *, n_seen: int | None = None,
                pooler_weight: float | Literal["auto"] = "auto", n_components: int = 50,
                cv_temperature: bool = False, seed: int = 0) -> ProbeStart:
    """The LP-FT start of a label head: the pooler weight (cross-validated, or
    :data:`SEEN_POOLER_WEIGHT` when more than :data:`MAX_SEEN_FRACTION` of the ``n_seen`` training
    cells were in the model's pretraining), the probe folded into the head and the expression path
    (:func:`probe_init`), and, with ``cv_temperature``, a temperature from the out-of-fold
    predictions (:func:`cross_validate_probe`). Shared by :func:`finetune` and the script that
    fits the embedded model's head; the choices go to the log."""
    probe_cv: ProbeCV | None = None
    scores: dict[float, float] = {}
    if pooler_weight == "auto" and n_seen and n_seen > MAX_SEEN_FRACTION * len(y):
        weight = SEEN_POOLER_WEIGHT
        log.info(f"    probe start: pooler weight {weight:g}, not cross-validated: {n_seen} "
                 f"of the {len(y)} training cells were in this model's pretraining, and "
                 "its features of them are memorised (a cross-validation on them "
                 "overrates the encoder); pass pooler_weight= to choose")
    elif pooler_weight == "auto":
        probe_cv = cross_validate_probe(x, pooled, y, n_components=n_components, seed=seed)
        weight, scores = _best_weight(probe_cv)
        if scores:
            tried = ", ".join(f"{w:g}: {f:.3f}" for w, f in scores.items())
            log.info(f"    probe start: pooler weight {weight:g} (cross-validated "
                     f"macro-F1 {tried})")
        elif pooled is not None and x is not None:
            log.info(f"    probe start: pooler weight {weight:g} (not cross-validated: "
                     "fewer than two classes have two training cells)")
    else:
        weight = float(pooler_weight)
    pw, pb = probe_init(model, label, x, pooled, y, n_classes, n_components=n_components,
                        pooler_weight=weight, seed=seed)
    temperature = None
    if cv_temperature:
        if probe_cv is None or weight not in probe_cv.log_proba:
            probe_cv = cross_validate_probe(x, pooled, y, (weight,), n_components=n_components,
                                            seed=seed)
        if probe_cv is not None:
            temperature = fit_temperature(probe_cv.log_proba[weight], y[probe_cv.rows])
    return ProbeStart(weight, scores, n_seen, pw, pb, temperature)


@finetune_doc
def finetune(
    adata: AnnData,
    label_key: str,
    model: BmfmRnaModel | str | None = None,
    *,
    batch_key: str | None = None,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    min_steps: int = 300,
    learning_rate: float = 1e-4,
    head_learning_rate: float | None = None,
    path_learning_rate: float = 0.0,
    batch_size: int = 32,
    lora: bool = False,
    lora_rank: int = 8,
    lora_targets: list[str] | None = None,
    freeze: int | str | list[str] | None = None,
    val_fraction: float | Literal["auto"] = "auto",
    max_length: int | None = None,
    gradient_reversal: float = 1.0,
    batch_loss_weight: float = 0.1,
    early_stopping: bool | dict[str, Any] | str = "auto",
    head_init: str = "linear_probe",
    expression_path: bool = True,
    pooler_weight: float | Literal["auto"] = "auto",
    balance_classes: bool = True,
    calibrate: bool | Literal["auto"] = "auto",
    gradient_clip_val: float = 1.0,
    layer: str | None = None,
    gene_symbols: str | None = None,
    accelerator: str = "auto",
    devices: Devices = "auto",
    num_nodes: int = 1,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    seed: int = 0,
    progress: bool = True,
    **trainer_kwargs: Any,
) -> BmfmRnaModel:
    """Fine-tune a BMFM-RNA model to predict ``obs[label_key]``, with a recipe that works from
    the defaults for 100 to 100,000 labelled cells and 2 to 100 classes.

    A new label head named ``label_key`` is put on the pooler of a copy of ``model``, next to an
    expression path (a bag-of-genes linear layer over the cell's log-normalised input genes).
    Both start from one logistic regression on the training cells (LP-FT; the pooler features'
    share chosen by cross-validation), then the encoder is fine-tuned beneath them (the head and
    the path keep their probe weights unless ``head_learning_rate`` / ``path_learning_rate`` say
    otherwise) with class-weighted focal loss, gradient clipping, warm-up + cosine decay over a
    budget counted in optimizer steps, and early stopping only on a validation set big enough to
    mean something. A temperature fitted on the validation cells (when there are >= 50 of them;
    else on cross-validated predictions of the training cells) calibrates the probabilities
    :func:`~biomed_toolkit.rna.tasks.annotate` reports. The input
    model is not changed.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (or ``layers[layer]``) and labels in ``obs[label_key]``
        (cells with a missing label are left out).
    label_key
        ``adata.obs`` column to learn; also the name of the new head.
    model
        Starting model (default: the embedded model), a name or a path.
    batch_key
        ``adata.obs`` column with batches: adds an adversarial head behind gradient reversal
        (coefficient ``gradient_reversal``, loss weight ``batch_loss_weight``).
    max_steps
        Fix the budget in optimizer steps. Default (with ``max_epochs=None`` too): 20 passes over
        the training cells kept within [``min_steps``, 5000] steps.
    min_steps
        Floor of the default budget, and the fewest steps before early stopping may end a run.
    head_learning_rate
        AdamW learning rate of the new ``label_key`` head (``learning_rate`` is the encoder's;
        an adversarial batch head trains at 1e-3). Default: 0 after the linear-probe start (the
        head stays where the probe put it and the encoder is tuned beneath it), 1e-3 after a
        random start. Training the head from its probe start at 1e-3 for 300 steps on 90 cells
        took held-out macro-F1 from 0.967 to 0.861 (oligodendroglioma) and from 0.538 to 0.529
        (pbmc68k); training the encoder beneath the fixed head left it at 0.967.
    path_learning_rate
        AdamW learning rate of the expression path; 0 (default) keeps it at its logistic
        regression start (Adam would move its thousands of gene weights by ~lr each per step).
    lora_targets
        Module names LoRA adapts (default: the attention projections).
    val_fraction
        Stratified share of labelled cells held out for validation, early stopping and the
        temperature (0: none). ``"auto"`` (default): 0.1 when that is at least
        ``MIN_CALIBRATION_CELLS`` (50) cells, else 0: fewer validation cells could neither stop
        the run nor fit a temperature, so they train instead (the temperature then comes from
        cross-validation, see ``calibrate``); the log says which. Classes with fewer than
        ``MIN_CELLS_TO_VALIDATE`` (10) labelled cells give none to validation
        (:func:`validation_split`).
    max_length
        Tokens per cell (default: the model's training length ``config.max_length``, else 1024).
    head_init
        ``"linear_probe"`` (LP-FT start) or ``"random"`` (random head; the expression path then
        starts at zero and is used only with ``path_learning_rate > 0``).
    expression_path
        Give the head the bag-of-genes linear path over the input expression.
    pooler_weight
        Scale of the encoder's pooler features next to the PCA of the expression path in the
        probe start (0: the head starts at zero and the path alone is the probe). ``"auto"``
        (default): chosen among 0, 0.25, 0.5 and 1 by cross-validated macro-F1 on the training
        cells (:func:`choose_pooler_weight`), recorded in ``history.attrs["recipe"]``; 0.25
        without cross-validation when more than 10% of the training cells were in the model's
        pretraining (its folder lists them, :mod:`~biomed_toolkit.rna.seen_cells`), where the
        cross-validation would overrate the encoder.
    balance_classes
        Weight the loss by inverse square-root class frequency.
    calibrate
        ``"auto"`` (default): fit a temperature on the validation cells when there are at least
        ``MIN_CALIBRATION_CELLS`` (50) of them (a temperature fitted on a handful of cells does
        more harm than good), else on the probe start's out-of-fold predictions of the training
        cells (cross-validation, :func:`cross_validate_probe`; none when fewer than two classes
        have two cells; a class of one cell is fitted, never held out); ``True``: always fit on
        the validation cells; ``False``: never. The source is
        ``history.attrs["recipe"]["temperature_source"]``.
    gradient_clip_val
        Gradient-norm clipping.
    layer, gene_symbols
        Where the raw counts and the gene symbols are.
    seed
        Seeds the split, the gene order and the training.
    {finetune_parameters}

    ``early_stopping`` defaults to ``"auto"`` here: on ``val_loss`` with patience 5 checks, only
    with >= 100 validation cells and 5 per class, never before ``min_steps``.

    Returns
    -------
    A new fine-tuned model, ready for ``annotate(label=label_key)`` and ``save_pretrained``:
    ``model.history`` (training history; ``history.attrs["recipe"]`` holds the budget chosen and
    why), ``model.fit_result``, ``model.split`` (train/validation cell indices) and
    ``model.label_extras[label_key]`` (expression path and temperature).

    Examples
    --------
    >>> model = bt.tl.finetune(adata, "cell_type")  # doctest: +SKIP
    >>> bt.tl.annotate(query, model, label="cell_type")  # doctest: +SKIP
    >>> model.history.attrs["recipe"]["reason"]  # doctest: +SKIP
    """
    from torch.utils.data import DataLoader, RandomSampler, Subset

    from ..core.finetune import finetune_model
    from .configuration import LabelColumn
    from .inference import run_inference
    from .io import check_counts, get_matrix, to_csr
    from .objectives import CellDataset, PretrainingCollator
    from .tasks import _model
    from .tokenize import match_genes

    if head_init not in ("linear_probe", "random"):
        raise InputError(f"head_init must be 'linear_probe' or 'random', got {head_init!r}")
    from .inference import check_batch_size, default_max_length

    # before the model is copied and the counts read: a bad batch_size otherwise fails deep in the
    # recipe (ZeroDivisionError, TypeError, a raw torch ValueError)
    check_batch_size(batch_size, allow_auto=False)
    if calibrate not in (True, False, "auto"):
        raise InputError(f"calibrate must be True, False or 'auto', got {calibrate!r}")
    if pooler_weight != "auto" and not (isinstance(pooler_weight, int | float)
                                        and not isinstance(pooler_weight, bool)
                                        and 0.0 <= pooler_weight < math.inf):
        raise InputError(f"pooler_weight must be 'auto' or a number >= 0, got {pooler_weight!r}")
    if val_fraction != "auto" and not (isinstance(val_fraction, int | float)
                                       and not isinstance(val_fraction, bool)
                                       and 0.0 <= val_fraction < 1.0):
        raise InputError(f"val_fraction must be 'auto' or lie in [0, 1), got {val_fraction!r}")
    base = _model(model)
    max_length = default_max_length(base, max_length)
    codes, classes = label_codes(adata, label_key, "label_key")
    heads = [LabelColumn(label_key, len(classes))]
    labels = {label_key: codes}
    label_dict = {label_key: {c: i for i, c in enumerate(classes)}}
    if batch_key is not None:
        if batch_key == label_key:
            raise InputError("batch_key must differ from label_key")
        bcodes, bclasses = label_codes(adata, batch_key, "batch_key")
        heads.append(LabelColumn(batch_key, len(bclasses),
                                 gradient_reversal_coefficient=float(gradient_reversal)))
        labels[batch_key] = bcodes
        label_dict[batch_key] = {c: i for i, c in enumerate(bclasses)}

    with timed(log, f"fine-tuning a {label_key!r} head ({len(classes)} classes) on "
                    f"{adata.n_obs:,} cells"):
        new = with_heads(base, heads, {label_key, batch_key} - {None})
        new.label_dict.update(label_dict)
        match = match_genes(adata, new, gene_symbols=gene_symbols,
                            limit_genes=new.config.limit_genes, layer=layer, log_summary=True)
        matrix = get_matrix(adata, layer)
        counts = to_csr(matrix[:] if adata.isbacked else matrix)
        check_counts(counts.data, where="adata.X" if layer is None else f"adata.layers[{layer!r}]")
        labelled = np.flatnonzero(codes >= 0)
        if val_fraction == "auto":
            n_val = int(round(AUTO_VAL_FRACTION * len(labelled)))
            if n_val < MIN_CALIBRATION_CELLS:
                log.info(f"    no validation split: {AUTO_VAL_FRACTION:.0%} of the "
                         f"{len(labelled):,} labelled cells ({n_val}) could neither stop the run "
                         f"nor fit a temperature (>= {MIN_CALIBRATION_CELLS} needed), so every "
                         "cell trains (pass val_fraction= to hold some out)")
                n_val = 0
        else:
            n_val = int(round(val_fraction * len(labelled)))
        tr, va = validation_split(codes, labelled, n_val, seed=seed)
        recipe = plan_recipe(len(tr), len(va), len(classes), batch_size=batch_size,
                             max_epochs=max_epochs, max_steps=max_steps, min_steps=min_steps,
                             early_stopping=(early_stopping if isinstance(early_stopping, (bool, str))
                                             else True))
        log.info(f"    recipe: {recipe.steps} optimizer steps ({recipe.reason})")

        # expression path over the model genes seen in the training cells
        features = gene_ids = None
        if expression_path:
            col_ids = np.asarray(match.column_token_ids)
            gene_ids = expressed_gene_ids(counts[tr], col_ids)
            features = expression_features(counts, col_ids, gene_ids)
        pw = pb = None
        weight, cv_scores, n_seen = None, {}, None
        cv_temperature: float | None = None
        if head_init == "linear_probe":
            pooled = pooler_features(new, adata[tr], max_length=max_length, layer=layer,
                                     gene_symbols=gene_symbols)
            x_tr = None if features is None else features[tr].toarray()
            seen = seen_in_pretraining(base, counts[tr], match.column_token_ids)
            # too few validation cells to fit a temperature on: the probe start's out-of-fold
            # predictions on the training cells stand in for them
            start = probe_start(new, label_key, x_tr, pooled, codes[tr], len(classes),
                                n_seen=None if seen is None else int(seen.sum()),
                                pooler_weight=pooler_weight, seed=seed,
                                cv_temperature=(calibrate == "auto"
                                                and len(va) < MIN_CALIBRATION_CELLS))
            pw, pb, weight, cv_scores = (start.path_weight, start.path_bias, start.pooler_weight,
                                         start.cv_scores)
            n_seen, cv_temperature = start.n_seen, start.temperature
        elif features is not None and path_learning_rate > 0:
            # no probe start: the path starts at zero, so it only exists when it can train
            pw = np.zeros((len(gene_ids), len(classes)), dtype=np.float32)
            pb = np.zeros(len(classes), dtype=np.float32)

        new.card = base.card
        cls_ids = new.tokenizer.cls_token_ids(new.config.n_cls_tokens)

        def collator(s: int) -> AnnotationCollator:
            return AnnotationCollator(
                PretrainingCollator(counts, match.column_token_ids, new.config.vocab_size,
                                    labels=labels, max_length=max_length, expose_zeros=False,
                                    wced=False, cls_ids=cls_ids, seed=s),
                features if pw is not None else None)

        cells = CellDataset(adata.n_obs)
        gen = torch.Generator().manual_seed(seed)
        sampler = None
        if max_epochs is None:
            # "epochs" of at least 100 steps (reshuffled passes): a few cheap checkpoints
            # instead of one per 3 steps on a small data set
            sampler = RandomSampler(tr.tolist(), num_samples=recipe.steps_per_epoch * batch_size,
                                    generator=gen)
        train_loader = DataLoader(Subset(cells, tr.tolist()), batch_size=batch_size,
                                  shuffle=sampler is None, sampler=sampler,
                                  collate_fn=collator(seed), generator=gen)
        val_loader = (DataLoader(Subset(cells, va.tolist()), batch_size=batch_size,
                                 shuffle=False, collate_fn=collator(seed + 1)) if len(va) else None)

        if head_learning_rate is None:
            head_learning_rate = 0.0 if head_init == "linear_probe" else 1e-3

        def make_module(m: BmfmRnaModel) -> AnnotationModule:
            return AnnotationModule(
                m, label_key, path_weight=pw, path_bias=pb, learning_rate=learning_rate,
                head_learning_rate=head_learning_rate, path_learning_rate=path_learning_rate,
                steps=recipe.steps,
                warmup_steps=recipe.warmup_steps,
                class_weights=class_weights(codes[tr], len(classes)) if balance_classes else None,
                label_weights={batch_key: batch_loss_weight} if batch_key else None)

        stop: dict[str, Any] | None = None
        if recipe.early_stopping:
            stop = {"monitor": "val_loss", "patience": recipe.patience, "mode": "min"}
            if isinstance(early_stopping, dict):
                stop.update(early_stopping)
        trainer_kwargs.setdefault("every_n_steps", max(1, min(recipe.steps,
                                                              max(recipe.steps_per_epoch, 100))))
        trainer_kwargs.setdefault("gradient_clip_val", gradient_clip_val)
        if val_loader is not None:
            trainer_kwargs.setdefault("check_val_every_n_epoch", None)
            trainer_kwargs.setdefault("val_check_interval", recipe.val_check_every)
        trained = finetune_model(
            new, make_module, train_loader, val_loader, max_epochs=-1, max_steps=recipe.steps,
            min_steps=recipe.min_steps or None, lora=lora, lora_rank=lora_rank,
            lora_targets=lora_targets, trainable=("label_decoders",), freeze=freeze,
            accelerator=accelerator, devices=devices, num_nodes=num_nodes,
            early_stopping=stop, checkpoint_dir=checkpoint_dir, resume=resume,
            progress=progress, seed=seed, task=f"annotation ({label_key})", **trainer_kwargs)
        result = trained.fit_result
        trained.label_extras = dict(getattr(trained, "label_extras", {}) or {})
        if pw is not None:
            trained.label_extras[label_key] = ExpressionPath(
                gene_ids=np.asarray(gene_ids, dtype=np.int64),
                weight=result.module.path_weight.detach().cpu().numpy().astype(np.float32),
                bias=result.module.path_bias.detach().cpu().numpy().astype(np.float32))
        else:
            trained.label_extras.pop(label_key, None)
        temperature, source = 1.0, None
        fit_t = bool(len(va)) and (calibrate is True or (
            calibrate == "auto" and len(va) >= MIN_CALIBRATION_CELLS))
        if cv_temperature is not None and not fit_t:
            temperature, source = cv_temperature, "cross-validation"
            log.info(f"    temperature {temperature:.3f} fitted on the probe start's out-of-fold "
                     f"predictions of the training cells ({len(va)} validation cells are too few: "
                     f"a fit on them needs >= {MIN_CALIBRATION_CELLS})")
        elif calibrate == "auto" and len(va) and not fit_t:
            log.info(f"    no temperature fitted: {len(va)} validation cells are too few "
                     f"(calibration needs >= {MIN_CALIBRATION_CELLS}); probabilities are the model's own")
        if fit_t:
            source = "validation"
            res = run_inference(trained, adata[va], embeddings=False, labels=[label_key],
                                max_length=max_length, layer=layer, gene_symbols=gene_symbols,
                                progress=False)
            probs = calibrated_probabilities(trained, label_key, res.label_probabilities[label_key],
                                             adata[va], res.report.column_token_ids, layer=layer)
            z = np.log(np.clip(np.nan_to_num(probs, nan=1.0 / len(classes)), 1e-30, None))
            temperature = fit_temperature(z, codes[va])
            log.info(f"    temperature {temperature:.3f} fitted on {len(va)} validation cells")
        if source is not None:
            if pw is None:
                trained.label_extras[label_key] = ExpressionPath(
                    gene_ids=np.zeros(0, dtype=np.int64),
                    weight=np.zeros((0, len(classes)), dtype=np.float32),
                    bias=np.zeros(len(classes), dtype=np.float32))
            trained.label_extras[label_key].temperature = temperature
        info = {**recipe.to_dict(), "global_step": int(result.global_step),
                "temperature": temperature, "temperature_fitted": fit_t,
                "temperature_source": source,
                "expression_path": pw is not None, "pooler_weight": weight,
                "head_learning_rate": float(head_learning_rate),
                "pooler_weight_cv": {str(k): v for k, v in cv_scores.items()},
                "n_train_seen_in_pretraining": n_seen,
                "class_weights": bool(balance_classes), "n_train": int(len(tr)),
                "n_val": int(len(va))}
        history = result.history
        history.attrs["recipe"] = info
        trained.card.name = f"{base.card.name if base.card else 'bmfm-rna'}+finetuned:{label_key}"
        trained.card.extra.update({"label_key": label_key, "batch_key": batch_key,
                                   "classes": classes, "recipe": info})
        trained.history = history
        trained.split = {"train": tr, "val": va}
        trained.recipe = info
    return trained

