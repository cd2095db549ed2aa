"""Task-level inference: prompt building, batching, read-out, bad rows reported per row.

``TASKS`` lists every task with its inputs, prompt builder and read-out (the widget lists it).

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load()  # doctest: +SKIP
>>> bt.mammal.predict(model, "dti", {"protein": [seq], "smiles": ["CCO"]})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from biomed_toolkit.core.errors import InputError, PromptError
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.progress import progress as _progress

from . import prompts

log = get_logger(__name__)


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
    kind: str
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
    "generate": Task("generate", "generation", ("prompt",), _identity, "free generation from a prompt",
                     "decoded tokens with per-token probabilities"),
}
TASKS["esol"] = TASKS["solubility"]


def get_task(task: str | Task) -> Task:
    """Look up a task by name (case-insensitive)."""
    if isinstance(task, Task):
        return task
    key = str(task).lower()
    if key not in TASKS:
        raise InputError(f"unknown MAMMAL task {task!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def _rows(task: Task, inputs: Any) -> Any:
    """Inputs as a DataFrame with the task's column names."""
    import pandas as pd

    if isinstance(inputs, pd.DataFrame):
        df = inputs
    elif isinstance(inputs, Mapping):
        df = pd.DataFrame({k: list(v) if not isinstance(v, str) else [v] for k, v in inputs.items()})
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


def _norm(model: Any, task: Task) -> tuple[float, float]:
    stats = (getattr(model.config, "normalization", None) or {}).get(task.name)
    if stats:
        return float(stats["mean"]), float(stats["std"])
    if task.default_norm is not None:
        return task.default_norm
    log.warning(f"model has no normalisation stats for {task.name!r}: returning the raw scalar-head value")
    return 0.0, 1.0


def build_prompts(task: str | Task, df: Any, **prompt_kwargs: Any) -> tuple[list[str | None], list[str | None]]:
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


def predict(
    model: Any,
    task: str | Task,
    inputs: Any,
    *,
    batch_size: int = 32,
    progress: bool = True,
    max_new_tokens: int = 20,
    prompt_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Run a task on many inputs; bad rows get an ``error`` entry and the rest goes on.

    Parameters
    ----------
    model
        A loaded :class:`~biomed_toolkit.mammal.modeling.MammalModel`.
    task
        A key of :data:`TASKS`: ``"dti"``, ``"ppi"``, ``"bbbp"``, ``"clintox"``, ``"tcr"``,
        ``"solubility"``/``"esol"``, ``"generate"``.
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
    if model.tokenizer is None:
        raise InputError("the model has no tokenizer; load it from a folder with tokenizer/")
    df = _rows(t, inputs)
    kw = dict((getattr(model.config, "extra", {}) or {}).get("prompt_kwargs", {}).get(t.name, {}))
    kw.update(prompt_kwargs or {})
    built, errors = build_prompts(t, df, **kw)
    n = len(df)
    pred = np.full(n, np.nan)
    prob = np.full(n, np.nan)
    answers: list[str | None] = [None] * n
    labels = np.full(n, -1, dtype=np.int64)
    ok = [i for i in range(n) if built[i] is not None]
    ok.sort(key=lambda i: len(built[i]))  # similar lengths per batch: less padding
    mean, std = _norm(model, t) if t.kind == "regression" else (0.0, 1.0)
    tok = model.tokenizer
    id0, id1 = tok.special_tokens.get("<0>"), tok.special_tokens.get("<1>")
    chunks = [ok[i : i + batch_size] for i in range(0, len(ok), batch_size)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in _progress(chunks, total=len(chunks), desc=f"mammal {t.name}", enabled=None if progress else False):
                good = []
                for i in chunk:
                    try:
                        tok.encode_one(built[i])
                        good.append(i)
                    except PromptError as exc:
                        errors[i] = f"PromptError: {exc}"
                if not good:
                    continue
                batch = model.encode([built[i] for i in good])
                if t.kind == "regression":
                    if model.scalars_prediction_head is None:
                        raise InputError("the model has no scalar head; it cannot do regression tasks")
                    # Only position 0 (<MASK>) is read: skip the vocabulary-sized encoder head.
                    h0 = model.run_encoder(batch.to(model.device))[:, 0]
                    pred[good] = model.scalars_prediction_head(h0)[:, 0].float().cpu().numpy() * std + mean
                elif t.kind == "classification":
                    res = model.generate(batch, max_new_tokens=3, output_scores=True)
                    if res.ids.shape[1] > 1:  # the label is the token after <SENTINEL_ID_0>
                        prob[good] = res.probabilities(1)[:, id1].numpy()
                        step1 = res.ids[:, 1]
                    else:  # every answer ended at once: no label step
                        step1 = torch.full((len(good),), -1)
                    lab = torch.where(step1 == id1, 1, torch.where(step1 == id0, 0, -1))
                    labels[good] = lab.numpy()
                    pred[good] = lab.numpy()
                    for j, i in enumerate(good):
                        answers[i] = res.texts[j]
                else:
                    res = model.generate(batch, max_new_tokens=max_new_tokens)
                    mp = torch.nanmean(res.token_probabilities, dim=1).numpy()
                    prob[good] = mp
                    for j, i in enumerate(good):
                        answers[i] = res.texts[j]
    finally:
        model.train(was_training)
    out_df = df.copy()
    if t.kind == "regression":
        out_df["prediction"] = pred
        # The demo predicts KIBA scores for "dti"; the official fine-tuned model predicts pKd.
        stats = (getattr(model.config, "normalization", None) or {}).get(t.name) or {}
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
    model: Any,
    target: str,
    smiles_list: Sequence[str],
    *,
    batch_size: int = 64,
    progress: bool = True,
    top_k: int | None = None,
    prompt_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Score many molecules against one protein target (DTI pKd) and rank them.

    Parameters
    ----------
    model
        A MAMMAL model with a DTI scalar head.
    target
        Protein sequence (validated once).
    smiles_list
        Molecules (10,000 and more are fine; invalid ones get an ``error`` and rank last).
    top_k
        Keep only the best ``top_k`` rows.

    Returns
    -------
    pandas.DataFrame
        ``rank``, ``smiles``, ``prediction`` (pKd), ``error``, sorted best first.

    Examples
    --------
    >>> hits = virtual_screen(model, target_seq, library_smiles, top_k=50)  # doctest: +SKIP
    """
    prompts.check_protein(target, what="target protein")
    smiles = list(smiles_list)
    if not smiles:
        raise InputError("smiles_list is empty")
    df = predict(
        model, "dti", {"protein": [target] * len(smiles), "smiles": smiles},
        batch_size=batch_size, progress=progress, prompt_kwargs=prompt_kwargs,
    )
    df = df.drop(columns=["protein"]).sort_values("prediction", ascending=False, na_position="last", kind="stable")
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df = df.reset_index(drop=True)
    return df.head(top_k) if top_k is not None else df


__all__ = ["TASKS", "Task", "build_prompts", "get_task", "predict", "virtual_screen"]
