"""Virtual screens larger than memory: SMILES / CSV / Parquet in, Parquet parts out, resumable.

:func:`screen_file` reads the library in chunks, scores each chunk against one target with
:func:`~biomed_toolkit.mammal.tasks.predict` (length batching, tokenization workers, autocast on
GPU, optional sharding over devices / nodes) and writes ``part-<k>.parquet`` per chunk, atomically.
A rerun after a crash (even SIGKILL) skips the parts already written, so finished chunks are never
recomputed; peak memory is bounded by ``chunk_size``, not by the library.

Examples
--------
>>> import biomed_toolkit as bt
>>> res = bt.mammal.screen_file(model, target_seq, "library.smi", "screen_out/")  # doctest: +SKIP
>>> res.top(50)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.progress import progress as _progress
from biomed_toolkit.core.validation import check_int

from . import prompts

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .modeling import MammalModel

log = get_logger(__name__)

_PART = "part-{:06d}.parquet"
_STATE = "screen.json"


@dataclass
class ScreenResult:
    """The output folder of :func:`screen_file`.

    Attributes
    ----------
    folder
        Holds ``part-<k>.parquet`` (columns ``row``, ``smiles``, optional ``id``, ``prediction``,
        ``error``) and ``screen.json`` (what was screened, with which model).
    n_molecules, n_chunks
        Library size and number of parts.
    computed_chunks
        Parts computed by this call (the others were already there).
    """

    folder: Path
    n_molecules: int
    n_chunks: int
    computed_chunks: list[int]

    def parts(self) -> list[Path]:
        """The part files, in library order."""
        return sorted(self.folder.glob("part-*.parquet"))

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All scores as one DataFrame (library order); fine up to a few million rows."""
        import pandas as pd

        return pd.concat([pd.read_parquet(p, columns=columns) for p in self.parts()], ignore_index=True)

    def top(self, k: int = 100) -> pd.DataFrame:
        """The ``k`` best-scoring molecules, reading one part at a time (bounded memory)."""
        import pandas as pd

        k = check_int(k, "k", where="ScreenResult.top", example=100)
        best: list[pd.DataFrame] = []
        for p in self.parts():
            part = pd.read_parquet(p)
            best.append(part.nlargest(k, "prediction"))
            best = [pd.concat(best).nlargest(k, "prediction")]
        out = (best[0] if best else pd.DataFrame()).reset_index(drop=True)
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        return out


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)  # noqa: SIM115 - closed by caller


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in (".smi", ".smiles", ".txt"):
        return "smi"
    if last in (".csv", ".tsv"):
        return last[1:]
    if last in (".parquet", ".pq"):
        return "parquet"
    raise InputError(f"{path}: a library must be .smi / .txt (one SMILES per line), .csv / .tsv or .parquet")


def count_molecules(path: str | os.PathLike) -> int:
    """Number of molecules in a library file (Parquet metadata; lines for text files)."""
    path = Path(path)
    kind = _kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with _open_text(path) as fh:
        n = sum(1 for line in fh if line.strip())
    return n - 1 if kind in ("csv", "tsv") else n


def iter_chunks(path: str | os.PathLike, chunk_size: int, *, smiles_column: str = "smiles",
                id_column: str | None = None) -> Iterator[pd.DataFrame]:
    """``smiles`` (+ ``id``) DataFrames of at most ``chunk_size`` rows, in file order.

    ``.smi`` lines are ``SMILES [id]`` separated by whitespace; CSV / TSV / Parquet read the named
    columns only.
    """
    import pandas as pd

    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise InputError(f"library file {path} does not exist")
    cols = [smiles_column] + ([id_column] if id_column else [])
    if kind == "smi":
        with _open_text(path) as fh:
            smi: list[str] = []
            ids: list[str] = []
            for line in fh:
                parts = line.split()
                if not parts:
                    continue
                smi.append(parts[0])
                ids.append(parts[1] if len(parts) > 1 else "")
                if len(smi) == chunk_size:
                    yield pd.DataFrame({"smiles": smi, "id": ids})
                    smi, ids = [], []
            if smi:
                yield pd.DataFrame({"smiles": smi, "id": ids})
        return
    if kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise InputError(f"{path} has no column(s) {missing}; columns: {pf.schema_arrow.names}")
        for rb in pf.iter_batches(batch_size=chunk_size, columns=cols):
            yield _rename(rb.to_pandas(), smiles_column, id_column)
        return
    reader = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", usecols=cols, chunksize=chunk_size, dtype=str)
    for chunk in reader:
        yield _rename(chunk, smiles_column, id_column)


def _rename(df: pd.DataFrame, smiles_column: str, id_column: str | None) -> pd.DataFrame:
    out = {"smiles": df[smiles_column].astype(str).to_numpy()}
    out["id"] = df[id_column].astype(str).to_numpy() if id_column else np.full(len(df), "", dtype=object)
    import pandas as pd

    return pd.DataFrame(out)


def _fingerprint(model: MammalModel, target: str, source: Path, chunk_size: int,
                 prompt_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    card = model.card
    return {"target_sha1": hashlib.sha1(target.encode()).hexdigest(), "source": str(source.resolve()),
            "chunk_size": int(chunk_size), "model": card.name if card else None,
            "model_sha256": card.sha256 if card else None, "prompt_kwargs": dict(prompt_kwargs or {})}


def screen_file(
    model: MammalModel,
    target: str,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    smiles_column: str = "smiles",
    id_column: str | None = None,
    chunk_size: int = 50_000,
    batch_size: int = 64,
    resume: bool = True,
    progress: bool = True,
    num_workers: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] | None = None,
    num_nodes: int = 1,
    prompt_kwargs: Mapping[str, Any] | None = None,
) -> ScreenResult:
    """Score a library file against one target, chunk by chunk, into a folder of Parquet parts.

    Parameters
    ----------
    model
        A MAMMAL model with a DTI scalar head.
    target
        Protein sequence (validated once).
    source
        ``.smi`` / ``.txt`` (``SMILES [id]`` per line, optionally gzipped), ``.csv`` / ``.tsv``
        or ``.parquet``.
    output
        Folder for ``part-<k>.parquet`` and ``screen.json``.
    smiles_column, id_column
        Columns of a CSV / Parquet library.
    chunk_size
        Molecules per part (memory is bounded by it).
    resume
        Skip parts already written by an earlier run of the same screen (same target, library,
        model and chunk size, checked against ``screen.json``); ``False`` starts over.
    progress
        A progress bar in molecules per second.
    batch_size, num_workers, accelerator, devices, num_nodes, prompt_kwargs
        As in :func:`~biomed_toolkit.mammal.tasks.predict`.

    Returns
    -------
    ScreenResult
        ``.top(k)``, ``.read()``, and which chunks this call computed.

    Examples
    --------
    >>> res = screen_file(model, target_seq, "library.parquet", "out/", chunk_size=100_000)  # doctest: +SKIP
    >>> res.top(10)  # doctest: +SKIP
    """
    import pandas as pd

    from .tasks import check_prompt_kwargs, get_task, predict

    where = "screen_file"
    if prompt_kwargs is not None:
        check_prompt_kwargs(get_task("dti"), prompt_kwargs)
    chunk_size = check_int(chunk_size, "chunk_size", where=where, example=50_000)
    check_int(batch_size, "batch_size", where=where, example=64)
    check_int(num_workers, "num_workers", where=where, minimum=0, example=0)
    check_int(num_nodes, "num_nodes", where=where, example=1)
    prompts.check_protein(target, what="target protein")
    source = Path(source)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    state = _fingerprint(model, target, source, chunk_size, prompt_kwargs)
    state_file = folder / _STATE
    if state_file.exists() and resume:
        old = json.loads(state_file.read_text())
        if {k: old.get(k) for k in state} != state:
            raise InputError(
                f"{folder} holds another screen ({state_file}: target, library, model or chunk size differ); "
                "use another output folder or resume=False")
    elif not resume:
        for p in folder.glob("part-*.parquet"):
            p.unlink()
    n_total = count_molecules(source)
    state["n_molecules"] = n_total
    state_file.write_text(json.dumps(state, indent=1))
    done = {int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")}
    computed: list[int] = []
    bar = _progress(total=n_total, desc="screen", enabled=None if progress else False, unit="mol",
                    unit_scale=True, smoothing=0.1)
    start_row = 0
    n_chunks = 0
    t0 = time.perf_counter()
    try:
        for k, chunk in enumerate(iter_chunks(source, chunk_size, smiles_column=smiles_column, id_column=id_column)):
            n_chunks = k + 1
            rows = np.arange(start_row, start_row + len(chunk))
            start_row += len(chunk)
            if k in done:
                bar.update(len(chunk))
                continue
            scored = predict(model, "dti", {"protein": [target] * len(chunk), "smiles": chunk["smiles"].tolist()},
                             batch_size=batch_size, progress=False, prompt_kwargs=prompt_kwargs,
                             num_workers=num_workers, accelerator=accelerator, devices=devices, num_nodes=num_nodes)
            part = pd.DataFrame({"row": rows, "smiles": chunk["smiles"].to_numpy(), "id": chunk["id"].to_numpy(),
                                 "prediction": scored["prediction"].to_numpy(dtype=np.float32),
                                 "error": scored["error"].astype(object).to_numpy()})
            if not part["id"].astype(bool).any():
                part = part.drop(columns=["id"])
            _write_part(part, folder / _PART.format(k))
            computed.append(k)
            bar.update(len(chunk))
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    n_new = sum(min(chunk_size, n_total - k * chunk_size) for k in computed)
    if computed:
        log.info(f"screen: {n_new} molecules in {elapsed:.1f} s ({n_new / max(elapsed, 1e-9):.0f} molecules/s); "
                 f"{n_chunks - len(computed)} chunks were already done")
    return ScreenResult(folder, n_total, n_chunks, computed)


def _write_part(df: pd.DataFrame, path: Path) -> None:
    """Write atomically: a killed run leaves no half-written part behind."""
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


__all__ = ["ScreenResult", "count_molecules", "iter_chunks", "screen_file"]
