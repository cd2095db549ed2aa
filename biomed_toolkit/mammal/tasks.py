"""Task-level inference: prompt building, batching, read-out, bad rows reported per row.

``TASKS`` lists every task with its inputs, prompt builder and read-out (the widget lists it).

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load()  # doctest: +SKIP
>>> bt.mammal.predict(model, "dti", {"protein": [seq], "smiles": ["CCO"]})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from biomed_toolkit.core.errors import InputError, PromptError
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.progress import progress as _progress
from biomed_toolkit.core.validation import check_int, check_list

from . import prompts

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .modeling import MammalModel
    from .tokenizer import Batch, Tokenizer

log = get_logger(__name__)

TaskName = Literal["dti", "ppi", "bbbp", "clintox", "fda_approval", "tcr", "solubility", "esol",
                   "molecule_regression", "molecule_classification", "generate"]
TaskKind = Literal["regression", "classification", "generation"]


@dataclass(frozen=True)
class Task:
    """One MAMMAL task.

    Attributes
    ----------
    name
        Registry key (``"dti"``, ``"ppi"``, ...).
    kind
        ``"regression"`` (scalar head at ``<MASK>``, position 0), ``"classification"`` (the
        ``<0>``/``<1>`` token generated after ``<SENTINEL_ID_0>``) or ``"generation"``.
    inputs
        Input column names, in the builder's argument order.
    build
        Prompt builder (from :mod:`biomed_toolkit.mammal.prompts`).
    description
        One line for listings.
    readout
        How the answer is read.
    unit
        Unit of a regression prediction.
    default_norm
        ``(mean, std)`` de-normalisation used when the model carries none for this task.
    aliases
        Other accepted column names per input.
    """

    name: str
    kind: TaskKind
    inputs: tuple[str, ...]
    build: Callable[..., str]
    description: str
    readout: str
    unit: str = ""
    default_norm: tuple[float, float] | None = None
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _mol(task: str) -> Callable[[str], str]:
    def build(smiles: str, **kw: Any) -> str:
        return prompts.molecule_property(smiles, task, **kw)

    build.__name__ = f"molecule_property_{task.lower()}"
    return build


def _identity(prompt: str) -> str:
    prompts.parse(prompt)
    return prompt


_PROT = ("protein", "target", "sequence", "aa_sequence", "target_sequence")
_SMI = ("smiles", "drug", "ligand", "molecule", "drug_smiles")
_CLS = "answer token after <SENTINEL_ID_0>: <1> positive / <0> negative; probability = P(<1>) at that step"
_REG = "scalar head at <MASK> (position 0), times std plus mean"

TASKS: dict[str, Task] = {
    "dti": Task("dti", "regression", ("protein", "smiles"), prompts.dti, "drug-target binding affinity (pKd)",
                _REG, "pKd", (prompts.DTI_PKD_MEAN, prompts.DTI_PKD_STD), {"protein": _PROT, "smiles": _SMI}),
    "ppi": Task("ppi", "classification", ("protein_a", "protein_b"), prompts.ppi, "protein-protein interaction",
                _CLS, aliases={"protein_a": ("a", "protein1", "seq_a"), "protein_b": ("b", "protein2", "seq_b")}),
    "bbbp": Task("bbbp", "classification", ("smiles",), _mol("BBBP"), "blood-brain barrier penetration",
                 _CLS, aliases={"smiles": _SMI}),
    "clintox": Task("clintox", "classification", ("smiles",), _mol("TOXICITY"), "clinical-trial toxicity (ClinTox)",
                    _CLS, aliases={"smiles": _SMI}),
    "fda_approval": Task("fda_approval", "classification", ("smiles",), _mol("FDA_APPR"),
                         "FDA approval (ClinTox)", _CLS, aliases={"smiles": _SMI}),
    "tcr": Task("tcr", "classification", ("tcr", "epitope"), prompts.tcr_epitope, "TCR beta - epitope binding",
                _CLS, aliases={"tcr": ("tcr_beta", "cdr3", "cdr3b"), "epitope": ("peptide", "antigen")}),
    "solubility": Task("solubility", "regression", ("smiles",), prompts.solubility,
                       "aqueous solubility log S (demo model)", _REG, "log mol/L", None, {"smiles": _SMI}),
    "molecule_regression": Task("molecule_regression", "regression", ("smiles",), prompts.molecule_regression,
                                "any scalar property of a molecule (fine-tune it on your values)", _REG,
                                aliases={"smiles": _SMI}),
    "molecule_classification": Task("molecule_classification", "classification", ("smiles",),
                                    prompts.molecule_classification,
                                    "any binary label of a molecule (fine-tune it on your labels)", _CLS,
                                    aliases={"smiles": _SMI}),
    "generate": Task("generate", "generation", ("prompt",), _identity, "free generation from a prompt",
                     "decoded tokens with per-token probabilities"),
}
TASKS["esol"] = TASKS["solubility"]


def get_task(task: TaskName | str | Task) -> Task:
    """Look up a task by name (case-insensitive)."""
    if isinstance(task, Task):
        return task
    key = str(task).lower()
    if key not in TASKS:
        raise InputError(f"unknown MAMMAL task {task!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def _rows(task: Task, inputs: Any) -> pd.DataFrame:
    """Inputs as a DataFrame with the task's column names."""
    import pandas as pd

    if isinstance(inputs, pd.DataFrame):
        df = inputs
    elif isinstance(inputs, Mapping):
        cols: dict[str, list[Any]] = {}
        for k, v in inputs.items():
            if isinstance(v, str) or not isinstance(v, Iterable):
                v = [v]  # one value for a one-row call
            cols[str(k)] = list(v)
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(
                f"task {task.name!r}: the input columns have different lengths {lengths}; give every column one "
                "value per row (e.g. repeat one protein as [protein] * n, or use virtual_screen for one target)"
            )
        df = pd.DataFrame(cols)
    elif isinstance(inputs, str):
        df = pd.DataFrame({task.inputs[0]: [inputs]})
    elif isinstance(inputs, Sequence):
        items = list(inputs)
        if len(task.inputs) == 1:
            df = pd.DataFrame({task.inputs[0]: items})
        else:
            bad = [i for i, r in enumerate(items) if not isinstance(r, list | tuple) or len(r) != len(task.inputs)]
            if bad:
                raise InputError(
                    f"task {task.name!r} needs {len(task.inputs)} values per row {task.inputs}; row {bad[0]} is "
                    f"{items[bad[0]]!r}. Pass a DataFrame/dict with columns {list(task.inputs)} or a list of tuples"
                )
            df = pd.DataFrame(items, columns=list(task.inputs))
    else:
        raise InputError(f"inputs must be a DataFrame, a dict of lists or a list, got {type(inputs).__name__}")
    out = {}
    for col in task.inputs:
        names = (col, *task.aliases.get(col, ()))
        found = next((c for c in names if c in df.columns), None)
        if found is None:
            raise InputError(
                f"task {task.name!r} needs a column {col!r} (or one of {list(names[1:])}); got columns {list(df.columns)}"
            )
        out[col] = df[found].tolist()
    return pd.DataFrame(out, index=df.index)


def _norm(model: MammalModel, task: Task) -> tuple[float, float]:
    stats = (getattr(model.config, "normalization", None) or {}).get(task.name)
    if stats:
        return float(stats["mean"]), float(stats["std"])
    if task.default_norm is not None:
        return task.default_norm
    log.warning(f"model has no normalisation stats for {task.name!r}: returning the raw scalar-head value")
    return 0.0, 1.0


def build_prompts(task: TaskName | Task, df: pd.DataFrame, **prompt_kwargs: Any) -> tuple[list[str | None], list[str | None]]:
    """Prompt per row, or ``None`` plus the error text for rows that cannot be built."""
    t = get_task(task)
    out: list[str | None] = []
    errs: list[str | None] = []
    for values in df[list(t.inputs)].itertuples(index=False, name=None):
        try:
            if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
                raise PromptError("missing value")
            out.append(t.build(*values, **prompt_kwargs))
            errs.append(None)
        except (PromptError, TypeError) as exc:
            out.append(None)
            errs.append(f"{type(exc).__name__}: {exc}")
    return out, errs


# ----------------------------------------------------------------------------- scoring engine


class _Encode:
    """Collate for scoring: tokenizes each prompt ONCE (validation in the same pass), then pads.

    Items are ``(row, prompt)``; returns ``(rows_ok, batch or None, [(row, error), ...])``.
    Picklable, so that DataLoader workers run it alongside the model.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[int, str]]) -> tuple[list[int], Batch | None, list[tuple[int, str]]]:
        good: list[int] = []
        encoded = []
        bad: list[tuple[int, str]] = []
        for row, prompt in items:
            try:
                encoded.append(self.tokenizer.encode_one(prompt))
                good.append(row)
            except PromptError as exc:
                bad.append((row, f"PromptError: {exc}"))
        batch = self.tokenizer.pad(encoded) if encoded else None
        return good, batch, bad


class _DistEncode(_Encode):
    """Collate of the distributed path: a batch plus a 0/1 ``ok`` flag per item (numeric outputs only)."""

    def __call__(self, items: list[tuple[int, str]]) -> dict[str, Any]:  # type: ignore[override]
        good, batch, _ = super().__call__(items)
        ok = torch.zeros(len(items), dtype=torch.bool)
        pos = {row: j for j, (row, _) in enumerate(items)}
        for row in good:
            ok[pos[row]] = True
        return {"batch": batch, "ok": ok}


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 (fp16 without bf16 support) autocast on CUDA; nothing elsewhere."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class _Scorer:
    """One batch -> numeric outputs for a regression or classification task (picklable)."""

    def __init__(self, model: MammalModel, kind: TaskKind, mean: float, std: float) -> None:
        self.model, self.kind, self.mean, self.std = model, kind, mean, std
        tok = model.tokenizer
        self.id0 = tok.special_tokens.get("<0>") if tok is not None else None
        self.id1 = tok.special_tokens.get("<1>") if tok is not None else None

    def score(self, batch: Batch) -> dict[str, Any]:
        model = self.model
        batch = batch.to(model.device)
        with _autocast(model.device):
            if self.kind == "regression":
                # Only position 0 (<MASK>) is read: skip the vocabulary-sized encoder head.
                h0 = model.run_encoder(batch)[:, 0]
                pred = model.scalars_prediction_head(h0)[:, 0].float() * self.std + self.mean
                return {"prediction": pred}
            res = model.generate(batch, max_new_tokens=3, output_scores=True)
        n = len(batch)
        if res.ids.shape[1] > 1:  # the label is the token after <SENTINEL_ID_0>
            prob = res.probabilities(1)[:, self.id1]
            step1 = res.ids[:, 1]
        else:  # every answer ended at once: no label step
            prob = torch.full((n,), float("nan"))
            step1 = torch.full((n,), -1)
        lab = torch.where(step1 == self.id1, 1, torch.where(step1 == self.id0, 0, -1))
        return {"prediction": lab, "probability": prob, "texts": res.texts}

    def __call__(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        ok = data["ok"]
        n = len(ok)
        pred = torch.full((n,), float("nan"))
        prob = torch.full((n,), float("nan"))
        if data["batch"] is not None:
            out = self.score(data["batch"])
            pred[ok.cpu()] = out["prediction"].float().cpu()
            if "probability" in out:
                prob[ok.cpu()] = out["probability"].float().cpu()
        return {"prediction": pred, "probability": prob, "ok": ok.float()}


class _Rows(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[int, str]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, str]:
        return self.items[i]


def _batches(order: list[int], built: list[str | None], batch_size: int, max_tokens: int | None) -> Iterator[list[tuple[int, str]]]:
    """Length-sorted batches of ``batch_size`` prompts (fewer when ``max_tokens`` characters are exceeded)."""
    cur: list[tuple[int, str]] = []
    for i in order:
        p = built[i]
        assert p is not None
        if cur and (len(cur) >= batch_size or (max_tokens and (len(cur) + 1) * len(p) > max_tokens)):
            yield cur
            cur = []
        cur.append((i, p))
    if cur:
        yield cur


def _default_kwargs(model: MammalModel, task: Task, prompt_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if prompt_kwargs is not None and not isinstance(prompt_kwargs, Mapping):
        raise InputError(f"prompt_kwargs must be a dict such as {{'max_len': 256}}, got {type(prompt_kwargs).__name__}")
    kw = dict((model.config.extra or {}).get("prompt_kwargs", {}).get(task.name, {}))
    kw.update(prompt_kwargs or {})
    return check_prompt_kwargs(task, kw)


def check_prompt_kwargs(task: Task, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse builder options the task's prompt builder does not take, or a ``*max_len`` below 1.

    Checked once at entry: inside the per-row loop a bad option would fail every row on its own.

    Examples
    --------
    >>> check_prompt_kwargs(get_task("dti"), {"protein_max_len": 512})
    {'protein_max_len': 512}
    """
    params = inspect.signature(task.build).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if takes_any:  # the molecule-property wrappers pass **kw on to molecule_property
        options = [n for n, p in inspect.signature(prompts.molecule_property).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY]
    out = dict(kwargs)
    for key, value in out.items():
        if key not in options:
            raise InputError(
                f"prompt_kwargs: task {task.name!r} has no prompt option {key!r} (given, or from the model's "
                f"config.extra['prompt_kwargs']); its options are {options or 'none'}"
            )
        if key.endswith("max_len"):
            out[key] = check_int(value, key, where=f"prompt_kwargs of task {task.name!r}", example=256)
    return out


def predict(
    model: MammalModel,
    task: TaskName | Task,
    inputs: pd.DataFrame | Mapping[str, Sequence[Any]] | Sequence[Any] | str,
    *,
    batch_size: int = 32,
    progress: bool = True,
    max_new_tokens: int = 20,
    prompt_kwargs: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] | None = None,
    num_nodes: int = 1,
) -> pd.DataFrame:
    """Run a task on many inputs; bad rows get an ``error`` entry and the rest goes on.

    Every prompt is tokenized once (the tokenizer validates it in the same pass), prompts are
    batched by length (less padding), tokenization runs in ``num_workers`` DataLoader workers
    alongside the model, and CUDA runs under bf16 / fp16 autocast.

    Parameters
    ----------
    model
        A loaded :class:`~biomed_toolkit.mammal.modeling.MammalModel`.
    task
        A key of :data:`TASKS`: ``"dti"``, ``"ppi"``, ``"bbbp"``, ``"clintox"``, ``"tcr"``,
        ``"solubility"``/``"esol"``, ``"molecule_regression"``, ``"molecule_classification"``,
        ``"generate"``.
    inputs
        DataFrame or dict with the task's columns (``Task.inputs``, aliases accepted), a list of
        values (one-input tasks) or a list of tuples.
    batch_size, progress
        Batching and the progress bar.
    max_new_tokens
        For ``"generate"``.
    prompt_kwargs
        Extra builder options (e.g. ``{"protein_max_len": 512}``); defaults come from the model
        (``config.extra["prompt_kwargs"][task]``).
    num_workers
        DataLoader worker processes that tokenize the next batches while the model runs.
    accelerator, devices, num_nodes
        ``devices=None`` (default) scores in this process on the model's device. Anything else
        shards the batches over processes / GPUs / nodes through
        :func:`biomed_toolkit.core.inference.distributed_predict` (Lightning; the same scores as
        one process); not for ``"generate"``, and classification ``answer`` texts stay None.

    Returns
    -------
    pandas.DataFrame
        The input columns plus: regression ``prediction`` (de-normalised; its unit in
        ``df.attrs["unit"]``, e.g. pKd, or KIBA score for the demo model); classification
        ``prediction`` (1/0, or -1 if the answer was neither ``<1>`` nor ``<0>``), ``probability``
        (P(``<1>``)), ``answer``; generation ``answer`` and ``mean_token_probability``; always
        ``error`` (None when the row worked).

    Examples
    --------
    >>> df = predict(model, "bbbp", ["CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "not a smiles"])  # doctest: +SKIP
    >>> df[["prediction", "probability", "error"]]  # doctest: +SKIP
    """
    t = get_task(task)
    where = "mammal.predict"
    batch_size = check_int(batch_size, "batch_size", where=where, example=32)
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", where=where, example=20)
    num_workers = check_int(num_workers, "num_workers", where=where, minimum=0, example=0)
    num_nodes = check_int(num_nodes, "num_nodes", where=where, example=1)
    if model.tokenizer is None:
        raise InputError("the model has no tokenizer; load it from a folder with tokenizer/")
    if t.kind == "regression" and model.scalars_prediction_head is None:
        raise InputError("the model has no scalar head; it cannot do regression tasks")
    df = _rows(t, inputs)
    built, errors = build_prompts(t, df, **_default_kwargs(model, t, prompt_kwargs))
    n = len(df)
    pred = np.full(n, np.nan)
    prob = np.full(n, np.nan)
    answers: list[str | None] = [None] * n
    ok = sorted((i for i in range(n) if built[i] is not None), key=lambda i: len(built[i]))  # type: ignore[arg-type]
    mean, std = _norm(model, t) if t.kind == "regression" else (0.0, 1.0)
    scorer = _Scorer(model, t.kind, mean, std)
    tok = model.tokenizer
    if devices is not None and t.kind != "generation" and ok:
        from biomed_toolkit.core.inference import distributed_predict

        items = [(i, built[i]) for i in ok]
        with model.inference():
            out = distributed_predict(scorer, _Rows(items), batch_size=batch_size, collate_fn=_DistEncode(tok),
                                      module=model, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                                      progress=progress)
        rows = np.asarray(ok)
        good = out["ok"] > 0.5
        pred[rows[good]] = out["prediction"][good]
        prob[rows[good]] = out["probability"][good]
        for i in rows[~good]:  # re-tokenize only the failures, for their message
            try:
                tok.encode_one(built[i])  # type: ignore[arg-type]
            except PromptError as exc:
                errors[i] = f"PromptError: {exc}"
        labels = np.where(np.isfinite(pred), pred, -1).astype(np.int64)  # answer texts stay None here
    else:
        labels = np.full(n, -1, dtype=np.int64)
        chunks = list(_batches(ok, built, batch_size, None))
        loader = torch.utils.data.DataLoader(chunks, batch_size=None, collate_fn=_Encode(tok), num_workers=num_workers)
        with model.inference():
            for good, batch, bad in _progress(loader, total=len(chunks), desc=f"mammal {t.name}",
                                              enabled=None if progress else False):
                for i, err in bad:
                    errors[i] = err
                if batch is None:
                    continue
                if t.kind == "regression":
                    pred[good] = scorer.score(batch)["prediction"].cpu().numpy()
                elif t.kind == "classification":
                    res = scorer.score(batch)
                    prob[good] = res["probability"].numpy()
                    labels[good] = res["prediction"].numpy()
                    for j, i in enumerate(good):
                        answers[i] = res["texts"][j]
                else:
                    res = model.generate(batch, max_new_tokens=max_new_tokens)
                    prob[good] = torch.nanmean(res.token_probabilities, dim=1).numpy()
                    for j, i in enumerate(good):
                        answers[i] = res.texts[j]
    out_df = df.copy()
    if t.kind == "regression":
        out_df["prediction"] = pred
        # The demo predicts KIBA scores for "dti"; the official fine-tuned model predicts pKd.
        stats = (model.config.normalization or {}).get(t.name) or {}
        out_df.attrs["unit"] = stats.get("unit", t.unit)
    elif t.kind == "classification":
        out_df["prediction"] = labels
        out_df.loc[[e is not None for e in errors], "prediction"] = -1
        out_df["probability"] = prob
        out_df["answer"] = answers
    else:
        out_df["answer"] = answers
        out_df["mean_token_probability"] = prob
    out_df["error"] = errors
    n_bad = sum(e is not None for e in errors)
    if n_bad:
        log.warning(f"{n_bad} of {n} rows could not be scored; see the 'error' column")
    return out_df


def virtual_screen(
    model: MammalModel,
    target: str,
    smiles_list: Sequence[str],
    *,
    batch_size: int = 64,
    progress: bool = True,
    top_k: int | None = None,
    prompt_kwargs: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] | None = None,
    num_nodes: int = 1,
) -> pd.DataFrame:
    """Score many molecules against one protein target (DTI) and rank them.

    Parameters
    ----------
    model
        A MAMMAL model with a DTI scalar head.
    target
        Protein sequence (validated once).
    smiles_list
        A list of molecules (invalid ones get an ``error`` and rank last); a single string is
        refused (pass ``["CCO"]`` for one molecule). For libraries larger than memory use
        :func:`screen_file`.
    top_k
        Keep only the best ``top_k`` rows (an integer >= 1; ``None`` keeps all).
    num_workers, accelerator, devices, num_nodes
        As in :func:`predict` (tokenization workers; sharding over processes / GPUs / nodes).

    Returns
    -------
    pandas.DataFrame
        ``rank``, ``smiles``, ``prediction`` (pKd, or KIBA score for the demo), ``error``, best first.

    Examples
    --------
    >>> hits = virtual_screen(model, target_seq, library_smiles, top_k=50)  # doctest: +SKIP
    """
    where = "virtual_screen"
    smiles = check_list(smiles_list, "smiles_list", where=where, example="CCO")
    top_k = check_int(top_k, "top_k", where=where, allow_none=True, example=50)
    batch_size = check_int(batch_size, "batch_size", where=where, example=64)
    prompts.check_protein(target, what="target protein")
    if not smiles:
        raise InputError("virtual_screen: smiles_list is empty; pass at least one SMILES")
    df = predict(
        model, "dti", {"protein": [target] * len(smiles), "smiles": smiles},
        batch_size=batch_size, progress=progress, prompt_kwargs=prompt_kwargs, num_workers=num_workers,
        accelerator=accelerator, devices=devices, num_nodes=num_nodes,
    )
    df = df.drop(columns=["protein"]).sort_values("prediction", ascending=False, na_position="last", kind="stable")
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df = df.reset_index(drop=True)
    return df.head(top_k) if top_k is not None else df


__all__ = ["TASKS", "Task", "TaskKind", "TaskName", "build_prompts", "check_prompt_kwargs", "get_task", "predict",
           "virtual_screen"]
