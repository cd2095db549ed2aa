"""Model registry, resolution of names / hub ids / folders, download and model cards.

>>> import biomed_toolkit as bt
>>> bt.hub.list_models()  # doctest: +SKIP
>>> bt.hub.resolve("bmfm-rna-demo").path  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import CheckpointError, InputError, OfflineError
from .log import get_logger
from .settings import settings

log = get_logger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "_models"
MANIFEST = "manifest.json"
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt")
#: the main weights file of our folders (core.model.WEIGHTS_NAME; hub imports nothing of model)
MAIN_WEIGHTS = "model.safetensors"


@dataclass
class ModelSpec:
    """One registered model: an embedded demo inside the package, or an official hub checkpoint."""

    name: str
    family: str
    task: str
    source: str  # "embedded" or "hub"
    hub_id: str | None = None
    folder: str | None = None  # embedded: folder name under biomed_toolkit/_models
    parameters: int | None = None
    description: str = ""
    files: tuple[str, ...] = ()  # what a local copy must hold (shown in offline errors)
    sha256: dict[str, str] = field(default_factory=dict)
    default: bool = False
    verified: str = ""  # what was checked against the official code (fixture, outputs); "" = nothing

    @property
    def path(self) -> Path | None:
        return EMBEDDED_DIR / self.folder if self.folder else None


@dataclass
class ResolvedModel:
    """Where a model's files are on disk and what we know of it."""

    path: Path
    spec: ModelSpec | None
    source: str  # "embedded", "hub", "cache", "local"

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else str(self.path)


@dataclass
class ModelCard:
    """Provenance carried by every loaded model and recorded by every tool that uses it."""

    name: str
    family: str
    source: str
    sha256: str | None
    config: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON- and AnnData-``uns``-friendly dict (None values dropped)."""
        out = dataclasses.asdict(self)
        out["config"] = json.loads(json.dumps(self.config, default=str))
        out["extra"] = json.loads(json.dumps(self.extra, default=str))
        return {k: v for k, v in out.items() if v is not None}

    def __repr__(self) -> str:
        sha = (self.sha256 or "unknown")[:12]
        return f"ModelCard(name={self.name!r}, family={self.family!r}, source={self.source!r}, sha256={sha}...)"

    def _repr_html_(self) -> str:
        rows = [
            ("name", self.name),
            ("family", self.family),
            ("task", self.task or ""),
            ("source", self.source),
            ("path", self.path or ""),
            ("sha256", self.sha256 or "unknown"),
        ]
        body = "".join(f"<tr><td style='text-align:left'><b>{k}</b></td><td style='text-align:left'>{v}</td></tr>" for k, v in rows)
        return f"<table><caption>Model card</caption>{body}</table>"


# --------------------------------------------------------------------------------------------
# checksums
_sha_cache: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (cached per path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def weights_file(folder: str | os.PathLike) -> Path | None:
    """The main weights file of a model folder (``model.safetensors``, else the first file of
    the first weight suffix: safetensors first), or None."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    if (folder / MAIN_WEIGHTS).is_file():  # not a side file such as label_heads.safetensors
        return folder / MAIN_WEIGHTS
    for suffix in _WEIGHT_SUFFIXES:
        found = sorted(folder.glob(f"*{suffix}"))
        if found:
            return found[0]
    return None


def make_card(
    name: str,
    family: str,
    source: str,
    path: str | os.PathLike | None,
    config: dict[str, Any] | None = None,
    task: str | None = None,
    **extra: Any,
) -> ModelCard:
    """Build a :class:`ModelCard`, hashing the weights file found at ``path``."""
    weights = weights_file(path) if path is not None else None
    return ModelCard(
        name=name,
        family=family,
        source=source,
        sha256=sha256_file(weights) if weights is not None else None,
        config=dict(config or {}),
        task=task,
        path=str(path) if path is not None else None,
        extra=extra,
    )


# --------------------------------------------------------------------------------------------
# registry: each family lists its official checkpoints in ``<domain>/registry.py``
def family_registries() -> dict[str, ModuleType]:
    """Each family's registry module (``MODELS``, ``PICKLE_CLASSES``, ``LEGACY_RENAMES``),
    named in ``biomed_toolkit.FAMILY_REGISTRIES``; core imports no domain by name."""
    import biomed_toolkit

    return {family: importlib.import_module(module)
            for family, module in biomed_toolkit.FAMILY_REGISTRIES.items()}


def families() -> tuple[str, ...]:
    """Names of the model families the toolkit knows."""
    import biomed_toolkit

    return tuple(biomed_toolkit.FAMILY_REGISTRIES)


_extra_specs: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add (or replace) a model in the registry."""
    if spec.family not in families():
        raise InputError(f"unknown model family {spec.family!r}: choose one of {families()}")
    _extra_specs[spec.name] = spec


def _embedded_specs() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    if not EMBEDDED_DIR.is_dir():
        return specs
    for manifest in sorted(EMBEDDED_DIR.glob(f"*/{MANIFEST}")):
        try:
            data = json.loads(manifest.read_text())
            if not isinstance(data, dict) or not {"name", "family"} <= data.keys():
                raise ValueError("expected an object with 'name' and 'family'")
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
            raise CheckpointError(
                f"{manifest} is not a readable model manifest ({type(exc).__name__}: {exc}); the "
                "install is damaged: reinstall biomed_toolkit") from None
        specs[data["name"]] = ModelSpec(
            name=data["name"],
            family=data["family"],
            task=data.get("task", ""),
            source="embedded",
            folder=manifest.parent.name,
            parameters=data.get("parameters"),
            description=data.get("description", ""),
            sha256=data.get("sha256", {}),
            default=bool(data.get("default", False)),
        )
    return specs


def registry() -> dict[str, ModelSpec]:
    """All known models by name: embedded demos, official checkpoints, then user-registered."""
    specs = _embedded_specs()
    for module in family_registries().values():
        specs.update({s.name: s for s in module.MODELS})
    specs.update(_extra_specs)
    return specs


def default_model(family: str) -> ModelSpec:
    """The embedded default of a family (what ``bt.<domain>.load()`` gives)."""
    candidates = [s for s in registry().values() if s.family == family and s.source == "embedded"]
    if not candidates:
        raise CheckpointError(
            f"no embedded {family} model is installed in {EMBEDDED_DIR}: reinstall biomed_toolkit, "
            f"or run the training script in scripts/ that builds it"
        )
    return next((s for s in candidates if s.default), candidates[0])


def _hub_cache_folder(hub_id: str) -> Path:
    return settings.cache_dir / "models" / hub_id.replace("/", "--")


def _is_cached(spec: ModelSpec) -> bool:
    if spec.source == "embedded":
        return True
    return spec.hub_id is not None and _local_hub_copy(spec.hub_id) is not None


def list_models(family: str | None = None) -> Any:
    """Registered models as a DataFrame: name, family, task, parameters, source, location, cached,
    verified (what was checked against the official code: fixture and outputs), description.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> df = bt.hub.list_models("mammal")  # doctest: +SKIP
    """
    import pandas as pd

    rows = []
    for spec in registry().values():
        if family is not None and spec.family != family:
            continue
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "task": spec.task,
                "parameters": spec.parameters,
                "source": spec.source,
                "location": spec.hub_id or f"biomed_toolkit/_models/{spec.folder}",
                "cached": _is_cached(spec),
                "verified": spec.verified,
                "description": spec.description,
            }
        )
    return pd.DataFrame(rows, columns=["name", "family", "task", "parameters", "source", "location", "cached",
                                       "verified", "description"])


def write_manifest(
    folder: str | os.PathLike,
    *,
    name: str,
    family: str,
    task: str,
    description: str = "",
    default: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``manifest.json`` of an embedded model folder, with the sha256 of its weight files.

    Training scripts call this last, so the registry lists the model and loading verifies it.
    """
    folder = Path(folder)
    hashes = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    }
    params = None
    st = folder / "model.safetensors"
    if st.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(st), "pt") as handle:
                params = int(sum(_numel(handle.get_slice(k).get_shape()) for k in handle.keys()))
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: all "not readable"
            raise CheckpointError(
                f"{st} is not a readable safetensors file ({type(exc).__name__}: {exc}); write "
                "it again with save_pretrained before making the manifest") from exc
    data = {"name": name, "family": family, "task": task, "description": description,
            "default": default, "parameters": params, "sha256": hashes, **extra}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return data


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def verify_embedded(spec: ModelSpec) -> None:
    """Check an embedded model's files against the sha256 in its manifest."""
    assert spec.path is not None
    for rel, expected in spec.sha256.items():
        try:
            actual = sha256_file(spec.path / rel)
        except OSError as exc:
            raise CheckpointError(
                f"embedded model {spec.name!r}: {spec.path / rel} cannot be read ({exc}); the "
                "install is corrupt: reinstall biomed_toolkit") from None
        if actual != expected:
            raise CheckpointError(
                f"embedded model {spec.name!r}: {rel} has sha256 {actual[:12]}..., the manifest "
                f"says {expected[:12]}...; the install is corrupt: reinstall biomed_toolkit"
            )


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _local_hub_copy(hub_id: str) -> Path | None:
    """A complete local copy: our cache folder, or a Hugging Face cache snapshot."""
    ours = _hub_cache_folder(hub_id)
    if ours.is_dir() and any(ours.iterdir()):
        return ours
    try:
        from huggingface_hub import snapshot_download

        for cache in (settings.cache_dir / "hf", None):
            try:
                found = snapshot_download(hub_id, cache_dir=cache, local_files_only=True)
            except Exception:  # noqa: BLE001 - any miss means "not cached here"
                continue
            return Path(found)
    except ImportError:  # pragma: no cover
        return None
    return None


def _offline_message(hub_id: str, spec: ModelSpec | None, reason: str) -> str:
    files = ", ".join(spec.files) if spec and spec.files else "the repository's files"
    return (
        f"cannot download {hub_id!r}: {reason}. To use it offline, copy the hub repository "
        f"({files}) into {_hub_cache_folder(hub_id)} (or set bt.settings.cache_dir), or pass the "
        f"local folder path instead of the hub id."
    )


def resolve(
    name_or_path: str | os.PathLike,
    family: str | None = None,
    *,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
) -> ResolvedModel:
    """Find a model's files: a local file/folder, a registry name, or a hub id.

    Online, hub models download through ``huggingface_hub`` into ``bt.settings.cache_dir``;
    offline (``bt.settings.offline`` or no network) a clear error says which files to put where.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> bt.hub.resolve("/data/my_checkpoint_folder")  # doctest: +SKIP
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return ResolvedModel(path.resolve(), None, "local")
    specs = registry()
    spec = specs.get(text)
    if spec is None:
        spec = next((s for s in specs.values() if s.hub_id == text), None)
    if spec is not None and family is not None and spec.family != family:
        raise InputError(f"model {text!r} is a {spec.family} model, not {family}")
    if spec is not None and spec.source == "embedded":
        assert spec.path is not None
        verify_embedded(spec)
        return ResolvedModel(spec.path, spec, "embedded")
    hub_id = spec.hub_id if spec is not None else text
    if hub_id is None or not _looks_like_hub_id(hub_id):
        known = ", ".join(sorted(s.name for s in specs.values() if family in (None, s.family)))
        raise InputError(
            f"{text!r} is neither an existing file/folder, a registered model name, nor a hub id "
            f"('organisation/name'). Known names: {known}"
        )
    cached = _local_hub_copy(hub_id)
    if cached is not None:
        return ResolvedModel(cached, spec, "cache")
    if settings.offline:
        raise OfflineError(_offline_message(hub_id, spec, "offline mode is on (bt.settings.offline / HF_HUB_OFFLINE)"))
    try:
        from huggingface_hub import snapshot_download

        target = _hub_cache_folder(hub_id)
        log.info(f"downloading {hub_id} into {target}")
        found = snapshot_download(hub_id, revision=revision, local_dir=target, allow_patterns=allow_patterns)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise OfflineError(_offline_message(hub_id, spec, f"{type(exc).__name__}: {exc}")) from exc
    return ResolvedModel(Path(found), spec, "hub")
