"""Fine-tuning MAMMAL on your own table: Lightning modules and :func:`finetune` (the core contract).

``finetune(model, task, table, split=...)`` splits the table the way drug-discovery results are
evaluated (random, cold drug, cold target, scaffold), trains through
:func:`biomed_toolkit.core.finetune.finetune_model` (LoRA on by default above 100M parameters),
and returns a NEW model whose ``history`` holds the training curve and, in
``history.attrs["test_metrics"]`` and ``model.test_metrics``, the held-out metrics next to
fingerprint baselines fitted on the same split.

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load()  # doctest: +SKIP
>>> tuned = bt.mammal.finetune(model, "dti", my_table, split="cold_drug", target="pKd")  # doctest: +SKIP
>>> tuned.test_metrics  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.finetune import finetune_doc, finetune_model
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.validation import check_int, check_positive_float

from .splits import Split, split_labels
from .tasks import Task, TaskName, _default_kwargs, _rows, build_prompts, get_task
from .tokenizer import Batch, Tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .modeling import MammalModel

log = get_logger(__name__)

#: Models above this many parameters are fine-tuned with LoRA unless ``lora=False`` is passed.
LORA_DEFAULT_ABOVE = 100_000_000


class PromptDataset(Dataset):
    """``(prompt, target)`` pairs; targets are floats (regression) or 0/1 labels."""

    def __init__(self, prompts: Sequence[str], targets: Sequence[float]) -> None:
        if len(prompts) != len(targets):
            raise InputError(f"{len(prompts)} prompts but {len(targets)} targets")
        self.prompts = list(prompts)
        self.targets = [float(t) for t in targets]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> tuple[str, float]:
        return self.prompts[i], self.targets[i]


class Collator:
    """Tokenizes a list of ``(prompt, target)`` into ``{"batch": Batch, "y": tensor}`` (picklable)."""

    def __init__(self, tokenizer: Tokenizer, max_seq_len: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len

    def __call__(self, items: list[tuple[str, float]]) -> dict[str, Any]:
        prompts = [p for p, _ in items]
        b = self.tokenizer(prompts, max_seq_len=self.max_seq_len, padding="longest")
        return {"batch": b, "y": torch.tensor([t for _, t in items], dtype=torch.float32)}


class _Base(L.LightningModule):
    def __init__(self, model: MammalModel, *, learning_rate: float, weight_decay: float, warmup_steps: int) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        if not self.warmup_steps:
            return opt
        warm = max(1, int(self.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return {"batch": batch["batch"].to(device), "y": batch["y"].to(device)}


class ScalarRegressionModule(_Base):
    """Encoder-only regression: the scalar head at ``position`` (``<MASK>``) against normalised targets.

    Logs ``train_loss`` (MSE on normalised targets), ``val_loss``, ``val_rmse`` and ``val_pearson``
    (de-normalised units).

    Parameters
    ----------
    model
        A :class:`~biomed_toolkit.mammal.modeling.MammalModel` with a scalar head.
    mean, std
        Normalisation of the targets (predictions are ``head * std + mean``).

    Examples
    --------
    >>> module = ScalarRegressionModule(model, mean=-3.0, std=2.0)  # doctest: +SKIP
    """

    def __init__(
        self, model: MammalModel, *, mean: float = 0.0, std: float = 1.0, position: int = 0,
        learning_rate: float = 1e-4, weight_decay: float = 0.01, warmup_steps: int = 0,
    ) -> None:
        super().__init__(model, learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps)
        if model.scalars_prediction_head is None:
            raise InputError("the model has no scalars_prediction_head; it cannot be trained for regression")
        self.mean, self.std, self.position = float(mean), float(std), int(position)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def predict_normalised(self, b: Batch) -> torch.Tensor:
        h = self.model.run_encoder(b)[:, self.position]
        return self.model.scalars_prediction_head(h)[:, 0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        b, y = batch["batch"], batch["y"]
        loss = torch.nn.functional.mse_loss(self.predict_normalised(b), (y - self.mean) / self.std)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b, y = batch["batch"], batch["y"]
        p = self.predict_normalised(b)
        self.log("val_loss", torch.nn.functional.mse_loss(p, (y - self.mean) / self.std), prog_bar=True, batch_size=len(y))
        self._val.append((p.detach().cpu() * self.std + self.mean, y.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        p = torch.cat([a for a, _ in self._val]).double()
        y = torch.cat([b for _, b in self._val]).double()
        self._val.clear()
        self.log("val_rmse", float(torch.sqrt(((p - y) ** 2).mean())))
        if len(y) > 2 and float(y.std()) > 0 and float(p.std()) > 0:
            self.log("val_pearson", float(torch.corrcoef(torch.stack([p, y]))[0, 1]))


class GenerationClassificationModule(_Base):
    """Generation-based binary classification: teach the answer ``<SENTINEL_ID_0><0|1><EOS>``.

    Decoder inputs ``<DECODER_START><SENTINEL_ID_0><label>``, targets ``<SENTINEL_ID_0><label><EOS>``
    (cross-entropy over the vocabulary). Logs ``train_loss``, ``val_loss`` and ``val_accuracy``
    (the argmax at the label step equals the label token).

    Examples
    --------
    >>> module = GenerationClassificationModule(model)  # doctest: +SKIP
    """

    def __init__(self, model: MammalModel, *, learning_rate: float = 1e-4, weight_decay: float = 0.01,
                 warmup_steps: int = 0) -> None:
        super().__init__(model, learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps)
        tok = model.tokenizer
        if tok is None:
            raise InputError("the model has no tokenizer")
        st = tok.special_tokens
        self.ids = {k: st[k] for k in ("<DECODER_START>", "<SENTINEL_ID_0>", "<0>", "<1>", "<EOS>")}

    def _loss(self, b: Batch, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.ids
        lab = torch.where(y > 0.5, i["<1>"], i["<0>"]).long()
        n = len(y)
        dev = lab.device
        start = torch.full((n,), i["<DECODER_START>"], device=dev)
        sent = torch.full((n,), i["<SENTINEL_ID_0>"], device=dev)
        eos = torch.full((n,), i["<EOS>"], device=dev)
        dec_in = torch.stack([start, sent, lab], dim=1)
        target = torch.stack([sent, lab, eos], dim=1)
        logits = self.model.forward_teacher_forced(b, dec_in).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        acc = (logits[:, 1].argmax(-1) == lab).float().mean()
        return loss, acc

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch["batch"], batch["y"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["y"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, acc = self._loss(batch["batch"], batch["y"])
        self.log("val_loss", loss, prog_bar=True, batch_size=len(batch["y"]))
        self.log("val_accuracy", acc, batch_size=len(batch["y"]))


def _as_table(table: object, name: str) -> pd.DataFrame:
    """A DataFrame from a DataFrame or a dict of columns; anything else is refused by name."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, Mapping):
        try:
            return pd.DataFrame(dict(table))
        except ValueError as exc:  # columns of different lengths
            raise InputError(f"mammal.finetune: {name} cannot become a table ({exc}); give equal-length columns") from None
    raise InputError(f"mammal.finetune: {name} must be a pandas DataFrame (or a dict of columns), got {type(table).__name__}")


def _check_fractions(fractions: object, where: str) -> None:
    """Three finite numbers (train, validation, test); split_labels checks that they are > 0 and sum to 1."""
    ok = isinstance(fractions, Sequence) and not isinstance(fractions, str) and len(fractions) == 3
    if ok:
        ok = all(isinstance(f, int | float | np.floating) and not isinstance(f, bool) and np.isfinite(f)
                 for f in fractions)  # type: ignore[union-attr]
    if not ok:
        raise InputError(f"{where}: fractions must be three numbers (train, val, test) such as (0.8, 0.1, 0.1), "
                         f"got {fractions!r}")


def _target_column(task: Task, df: pd.DataFrame, target: str | None) -> str:
    cands = [target] if target else (
        ["label", "y", "target"] if task.kind == "classification" else ["y", "target", "affinity", "logS", "pKd", "label"])
    col = next((c for c in cands if c in df.columns), None)
    if col is None:
        raise InputError(f"no target column: pass target=... (looked for {cands}; columns: {list(df.columns)})")
    return col


def make_dataset(model: MammalModel, task: TaskName | Task, df: pd.DataFrame, *, target: str | None = None,
                 prompt_kwargs: Mapping[str, Any] | None = None) -> PromptDataset:
    """Prompts + targets for ``task`` from a DataFrame; any row that cannot be built is an error.

    ``target`` defaults to ``"label"`` for classification and ``"y"``/``"target"``/``"affinity"``/
    ``"logS"`` for regression.
    """
    t = get_task(task)
    if t.kind == "generation":
        raise InputError("fine-tuning supports regression and classification tasks, not 'generate'")
    col = _target_column(t, df, target)
    rows = _rows(t, df)
    built, errors = build_prompts(t, rows, **_default_kwargs(model, t, prompt_kwargs))
    bad = [(i, e) for i, e in enumerate(errors) if e is not None]
    if bad:
        shown = "; ".join(f"row {df.index[i]}: {e}" for i, e in bad[:3])
        raise InputError(f"{len(bad)} training rows have invalid inputs ({shown}); fix or drop them first")
    try:
        y = np.asarray(df[col], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"target column {col!r} must hold numbers ({exc}); convert or drop the other rows") from None
    if not np.isfinite(y).all():
        raise InputError(f"target column {col!r} has {int((~np.isfinite(y)).sum())} missing/non-finite values")
    if t.kind == "classification" and not set(np.unique(y)) <= {0.0, 1.0}:
        raise InputError(f"classification labels in {col!r} must be 0/1, got {sorted(set(np.unique(y)))[:5]}")
    return PromptDataset(built, y.tolist())  # type: ignore[arg-type]


def held_out_metrics(
    model: MammalModel, task: TaskName | Task, train: pd.DataFrame, test: pd.DataFrame, *, target: str,
    baselines: bool = True, prompt_kwargs: Mapping[str, Any] | None = None, seed: int = 0,
) -> pd.DataFrame:
    """Test-split metrics of ``model`` and of fingerprint baselines fitted on ``train``.

    Regression rows carry ``pearson``, ``spearman``, ``rmse``, ``mae`` and ``ci`` (concordance
    index); classification rows ``auroc`` and ``auprc``.
    """
    import pandas as pd

    from .baselines import features, fingerprint_baselines
    from .metrics import classification_metrics, regression_metrics
    from .tasks import predict

    t = get_task(task)
    y = test[target].to_numpy(dtype=np.float64)
    out = predict(model, t, test, progress=False, prompt_kwargs=prompt_kwargs)
    score = out["prediction" if t.kind == "regression" else "probability"].to_numpy(dtype=np.float64)
    measure = regression_metrics if t.kind == "regression" else classification_metrics
    rows = [{"model": "fine-tuned MAMMAL", **measure(y, score)}]
    if baselines:
        cols_tr, cols_te = _rows(t, train), _rows(t, test)
        x_tr = features({c: cols_tr[c].astype(str).tolist() for c in t.inputs})
        x_te = features({c: cols_te[c].astype(str).tolist() for c in t.inputs})
        preds = fingerprint_baselines(t.kind, x_tr, train[target].to_numpy(dtype=np.float64), x_te, seed=seed)
        rows += [{"model": name, **measure(y, p)} for name, p in preds.items()]
    return pd.DataFrame(rows)


@finetune_doc
def finetune(
    model: MammalModel,
    task: TaskName | Task,
    table: pd.DataFrame,
    val_table: pd.DataFrame | None = None,
    *,
    split: Split | None = None,
    target: str | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    baselines: bool = True,
    max_epochs: int = 3,
    learning_rate: float | None = None,
    batch_size: int = 16,
    lora: bool | None = None,
    lora_rank: int = 8,
    freeze: int | str | Sequence[str] | None = None,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    num_nodes: int = 1,
    early_stopping: bool | dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    seed: int | None = None,
    max_seq_len: int | None = None,
    prompt_kwargs: Mapping[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> MammalModel:
    """Fine-tune a copy of ``model`` on your own table and score it on a held-out split.

    Parameters
    ----------
    model
        A :class:`~biomed_toolkit.mammal.modeling.MammalModel` (not changed).
    task
        A regression task (``"dti"``, ``"solubility"``, ``"molecule_regression"`` for any scalar of
        a molecule) or a classification task (``"bbbp"``, ``"clintox"``, ``"ppi"``, ``"tcr"``,
        ``"molecule_classification"`` for any binary label of a molecule).
    table
        A DataFrame with the task's input columns (``protein``, ``smiles``, ...) and a target column.
    val_table
        Validation rows. Without ``split``, ``table`` is all training data and no test metrics are
        computed (the older two-table call).
    split
        ``"random"``, ``"cold_drug"`` (no molecule in two splits), ``"cold_target"`` (no protein
        in two splits) or ``"scaffold"`` (Bemis-Murcko scaffolds); ``table`` is cut into train /
        validation / test by ``fractions``. Default: ``"random"`` when ``val_table`` is None.
    target
        Target column; defaults to ``label`` (classification) or the first of ``y``, ``target``,
        ``affinity``, ``logS``, ``pKd``.
    baselines
        Also fit Morgan-fingerprint (+ protein 2-mer) random forest and ridge / logistic
        baselines on the same split and report them next to the model.
    {finetune_parameters}
    lora
        ``None`` (default): LoRA when the model has more than 100M parameters.
    learning_rate
        Default 1e-4 (full fine-tuning) or 1e-3 (LoRA).
    seed
        Seeds the split, the shuffling and the initialisation of LoRA adapters.
    max_seq_len, prompt_kwargs
        Truncation of the tokenized prompts; extra prompt-builder options.

    Returns
    -------
    MammalModel
        A new model: ``history`` (training curve; ``history.attrs["test_metrics"]`` holds the
        held-out metrics as records), ``test_metrics`` (DataFrame: the fine-tuned model and the
        baselines on the test split; None without a split), ``splits`` (the split label of every
        row of ``table``), ``fit_result`` and a card naming its parent. For regression the target
        normalisation is stored in ``config.normalization[task]`` so that :func:`predict`
        de-normalises.

    Examples
    --------
    >>> tuned = finetune(model, "solubility", table, split="scaffold", target="logS", max_epochs=5)  # doctest: +SKIP
    >>> tuned.test_metrics[["model", "pearson", "rmse"]]  # doctest: +SKIP
    """
    t = get_task(task)
    table = _as_table(table, "table")
    val_table = _as_table(val_table, "val_table") if val_table is not None else None
    where = "mammal.finetune"
    max_epochs = check_int(max_epochs, "max_epochs", where=where, example=3)
    batch_size = check_int(batch_size, "batch_size", where=where, example=16)
    lora_rank = check_int(lora_rank, "lora_rank", where=where, example=8)
    num_nodes = check_int(num_nodes, "num_nodes", where=where, example=1)
    max_seq_len = check_int(max_seq_len, "max_seq_len", where=where, allow_none=True, example=512)
    learning_rate = check_positive_float(learning_rate, "learning_rate", where=where, allow_none=True)
    seed = check_int(seed, "seed", where=where, minimum=0, allow_none=True, example=0)
    _check_fractions(fractions, where)
    seed_value = int(seed) if seed is not None else 0
    if split is None and val_table is None:
        split = "random"
    col = _target_column(t, table, target)
    full = make_dataset(model, t, table, target=col, prompt_kwargs=prompt_kwargs)  # bad rows fail here
    labels = None
    test_df = None
    train_ds = full
    if split is not None:
        labels = split_labels(table, split, fractions=fractions, seed=seed_value)
        train_df, val_df, test_df = (table[labels == s] for s in ("train", "val", "test"))
        keep = np.flatnonzero(labels == "train")
        train_ds = PromptDataset([full.prompts[i] for i in keep], [full.targets[i] for i in keep])
        if val_table is not None:
            val_df = val_table
    else:
        train_df, val_df = table, val_table
    val_ds = make_dataset(model, t, val_df, target=col, prompt_kwargs=prompt_kwargs) if val_df is not None else None
    if lora is None:
        lora = model.num_parameters() > LORA_DEFAULT_ABOVE
    lr = learning_rate if learning_rate is not None else (1e-3 if lora else 1e-4)
    stats = None
    if t.kind == "regression":
        stats = (model.config.normalization or {}).get(t.name)
        if stats is None:
            y = np.asarray(train_ds.targets)
            stats = {"mean": float(y.mean()), "std": float(y.std() or 1.0)}

    def make_module(copy: MammalModel) -> L.LightningModule:
        if t.kind == "regression":
            copy.config.normalization = {**(copy.config.normalization or {}), t.name: dict(stats)}
            return ScalarRegressionModule(copy, mean=stats["mean"], std=stats["std"], learning_rate=lr)
        return GenerationClassificationModule(copy, learning_rate=lr)

    if model.tokenizer is None:
        raise InputError("the model has no tokenizer; load it from a folder with tokenizer/")
    collate = Collator(model.tokenizer, max_seq_len)
    gen = torch.Generator().manual_seed(seed_value)
    train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=gen)
    val_dl = DataLoader(val_ds, batch_size=batch_size, collate_fn=collate) if val_ds is not None else None
    new = finetune_model(
        model, make_module, train_dl, val_dl, max_epochs=max_epochs, lora=bool(lora), lora_rank=lora_rank,
        trainable=["scalars_prediction_head"] if t.kind == "regression" else [], freeze=freeze,
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, early_stopping=early_stopping,
        checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, seed=seed, task=t.name,
        card_extra={"split": split, "learning_rate": lr, "rows": {"train": len(train_df),
                    "val": 0 if val_df is None else len(val_df), "test": 0 if test_df is None else len(test_df)}},
        **trainer_kwargs,
    )
    new.test_metrics = None
    new.splits = labels
    if test_df is not None and len(test_df):
        fit_on = train_df if val_df is None or val_table is not None else table[labels != "test"]
        metrics = held_out_metrics(new, t, fit_on, test_df, target=col, baselines=baselines,
                                   prompt_kwargs=prompt_kwargs, seed=seed_value)
        metrics.insert(1, "split", split)
        new.test_metrics = metrics
        if new.history is not None:
            new.history.attrs["test_metrics"] = metrics.to_dict("records")
        if new.card is not None:
            new.card.extra["test_metrics"] = metrics.to_dict("records")
    return new


__all__ = [
    "LORA_DEFAULT_ABOVE",
    "Collator",
    "GenerationClassificationModule",
    "PromptDataset",
    "ScalarRegressionModule",
    "finetune",
    "held_out_metrics",
    "make_dataset",
]
