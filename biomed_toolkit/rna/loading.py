"""Official BMFM-RNA layouts, read into :class:`~biomed_toolkit.rna.modeling.BmfmRnaModel`.

* a Lightning ``.ckpt`` (v1 and v2; read only through the restricted unpickler of
  ``core.safe_pickle``) with ``tokenizers/<field>/`` next to it; the path may be the file or its
  folder;
* a converted v2 ("vllm") folder: ``config.json`` (official field/label layout) +
  ``model.safetensors`` + ``checkpoint_metadata.json`` (class names, trainer settings) +
  ``tokenizers/``.

Our own folders (``config.json`` with ``model_type = biomed_toolkit.bmfm_rna``) are read by
:meth:`BmfmRnaModel.from_pretrained` itself (``core.model.BaseModel``); this module adds only
what lives beside their weights (:func:`read_extras` / :func:`write_extras`).

State-dict names are the official ones, so weights are copied without renaming (only the
Lightning ``model.`` prefix is stripped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.model import CONFIG_NAME, WEIGHTS_NAME
from biomed_toolkit.core.safe_pickle import PlainConfig

from .configuration import BmfmRnaConfig, LabelColumn, Variant, llama_mlp_size
from .modeling import BmfmRnaModel
from .registry import UNREPRODUCIBLE
from .seen_cells import PRETRAINING_CELLS_NAME, load_pretraining_cells, save_pretraining_cells
from .tokenize import GeneTokenizer

if TYPE_CHECKING:  # pragma: no cover
    from biomed_toolkit.core.hub import ModelSpec, ResolvedModel

__all__ = ["config_from_official", "load", "load_official", "read_extras", "refuse_unreproducible",
           "write_extras"]

log = get_logger(__name__)

#: An official config as pickled (a PlainConfig stand-in) or as JSON (a dict).
OfficialConfig = Mapping[str, Any] | PlainConfig

LABEL_DICT_NAME = "label_dict.json"
_POOLING = {"first_token": "first_token", "pooling_layer": "pooler", "mean_pooling": "mean",
            "pooler": "pooler", "mean": "mean"}
_SUPPORTED_MODES = ("token_scores", "regression", "is_zero", "wced")


def _get(obj: OfficialConfig | None, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _plain(obj: Any) -> Any:
    return obj.to_dict() if isinstance(obj, PlainConfig) else obj


def config_from_official(
    model_config: OfficialConfig, trainer_config: OfficialConfig | None = None, *,
    variant: Variant | None = None,
) -> BmfmRnaConfig:
    """Translate an official model config (pickled SCBertConfig/LlamaConfig state or a
    config.json dict) into a :class:`BmfmRnaConfig`.

    Raises
    ------
    CheckpointError
        For settings this implementation does not reproduce (position embeddings, binned
        expression tokens, unknown decode modes, deep label heads).
    """
    mc = model_config
    if variant is None:
        cls_path = getattr(mc, "cls_path", "") or ""
        mtype = str(_get(mc, "model_type", "") or "")
        variant = "v2" if ("Llama" in cls_path or "llama" in mtype) else "v1"
    if _get(mc, "position_embedding_type") is not None:
        raise CheckpointError(
            f"position_embedding_type={_get(mc, 'position_embedding_type')!r} is not supported "
            "(released BMFM-RNA models have none)")
    if int(_get(mc, "num_memory_tokens", 0) or 0):
        raise CheckpointError(
            f"num_memory_tokens={_get(mc, 'num_memory_tokens')} (memory/aux tokens) is not "
            "supported (released BMFM-RNA models have none)")
    fields_ = [_plain(f) for f in (_get(mc, "fields") or [])]
    inputs = [f for f in fields_ if f.get("is_input", True)]
    genes = [f for f in inputs if f.get("tokenization_strategy") == "tokenize"]
    exprs = [f for f in inputs if f.get("tokenization_strategy") == "continuous_value_encoder"]
    if len(genes) != 1 or len(exprs) != 1 or len(inputs) != 2:
        names = [(f.get("field_name"), f.get("tokenization_strategy")) for f in inputs]
        raise CheckpointError(
            f"expected two input fields (genes tokenized, expressions continuous), got {names}")
    g, e = genes[0], exprs[0]
    decode_modes: dict[str, dict[str, dict[str, Any]]] = {}
    for f in fields_:
        modes = f.get("decode_modes")
        if not modes:
            continue
        if isinstance(modes, list | tuple):
            modes = {m: {} for m in modes}
        bad = [m for m in modes if m not in _SUPPORTED_MODES]
        if bad:
            raise CheckpointError(f"field {f['field_name']!r}: decode modes {bad} not supported")
        decode_modes[f["field_name"]] = {m: dict(v or {}) for m, v in modes.items()}
    enc = dict(e.get("encoder_kwargs") or {})
    kind = enc.pop("kind", "mlp_with_special_token_embedding")
    labels = []
    for c in _get(mc, "label_columns") or []:
        c = _plain(c)
        n = c.get("n_unique_values", c.get("output_size"))
        if n is None:
            raise CheckpointError(f"label column {c.get('label_column_name')!r} has no class count")
        for flag in ("is_multilabel", "is_regression_label"):
            if c.get(flag):
                raise CheckpointError(
                    f"label column {c['label_column_name']!r} has {flag}=True, which this "
                    "implementation does not reproduce")
        pos = c.get("decode_from")
        labels.append(LabelColumn(
            name=c["label_column_name"], n_classes=int(n),
            gradient_reversal_coefficient=c.get("gradient_reversal_coefficient"),
            classifier_depth=int(c.get("classifier_depth", 1) or 1),
            decode_from=None if pos is None else int(pos)))
    hidden = int(_get(mc, "hidden_size", 768))
    common: dict[str, Any] = dict(
        vocab_size=int(g["vocab_size"]), hidden_size=hidden,
        num_hidden_layers=int(_get(mc, "num_hidden_layers", 12)),
        num_attention_heads=int(_get(mc, "num_attention_heads", 12)),
        layer_norm_eps=float(_get(mc, "layer_norm_eps", 1e-12) or 1e-12),
        hidden_dropout_prob=float(_get(mc, "hidden_dropout_prob", 0.1) or 0.0),
        pad_token_id=int(_get(mc, "pad_token_id", 2) if _get(mc, "pad_token_id") is not None else 2),
        num_special_tokens=int(e.get("num_special_tokens", 5) or 5),
        expression_encoder=kind, expression_encoder_kwargs=enc,
        decode_modes=decode_modes, label_columns=labels,
        gene_field=g["field_name"], expression_field=e["field_name"],
    )
    if variant == "v1":
        common.update(
            intermediate_size=int(_get(mc, "intermediate_size", 3072)),
            hidden_act=str(_get(mc, "hidden_act", "gelu")),
            attention_probs_dropout_prob=float(_get(mc, "attention_probs_dropout_prob", 0.1) or 0.0),
            classifier_dropout=float(_get(mc, "classifier_dropout", 0.1) or 0.0),
        )
        cfg = BmfmRnaConfig(variant="v1", **common)
    else:
        common.update(intermediate_size=llama_mlp_size(hidden),
                      hidden_act=str(_get(mc, "hidden_act", "gelu") or "gelu"))
        cfg = BmfmRnaConfig.v2(**common)
    pm = _get(trainer_config, "pooling_method") if trainer_config is not None else None
    if isinstance(pm, str) and pm in _POOLING:
        cfg.pooling = _POOLING[pm]
    else:
        cfg.pooling = "first_token" if cfg.wced is not None else "pooler"
    return cfg


def official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official state-dict names -> ours: strip Lightning's ``model.``, nest MLM-only heads."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("model."):
            k = k[len("model."):]
        # MLM-only official models hold the LM head directly under cls.predictions
        if k.startswith("cls.predictions.") and not k.startswith("cls.predictions.predictions."):
            k = "cls.predictions.predictions." + k[len("cls.predictions."):]
        if k.endswith("position_ids"):
            continue
        out[k] = v
    return out


def refuse_unreproducible(name_or_path: str | os.PathLike, spec: ModelSpec | None = None) -> None:
    """Raise for a registered checkpoint whose inputs this implementation cannot build exactly.

    ``name_or_path`` may be a registry name, a hub id or a path (a hub cache folder keeps the
    repository name); see ``registry.UNREPRODUCIBLE``.
    """
    from biomed_toolkit.core import hub

    text = os.fspath(name_or_path)
    if spec is None:
        spec = hub.registry().get(text)
    for hub_id, reason in UNREPRODUCIBLE.items():
        repo = hub_id.rsplit("/", 1)[-1]
        if (spec is not None and spec.hub_id == hub_id) or text == hub_id \
                or repo in Path(text).parts or hub_id.replace("/", "--") in text:
            raise CheckpointError(f"{hub_id} cannot be loaded: {reason}")


def _attach_tokenizer(model: BmfmRnaModel, tok: GeneTokenizer, where: Path) -> None:
    if tok.vocab_size != model.config.vocab_size:
        raise CheckpointError(
            f"tokenizer in {where} has {tok.vocab_size} genes but the model expects "
            f"{model.config.vocab_size}: the tokenizers/ folder belongs to another checkpoint")
    tok.n_cls_tokens = model.config.n_cls_tokens
    model.tokenizer = tok


def _read_label_dict(path: Path) -> dict[str, dict[str, int]]:
    """``label_dict.json``: ``{label: {class name: index}}``, checked."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore the file from the "
                              "original model") from None
    ok = isinstance(data, Mapping) and all(
        isinstance(v, Mapping) and all(isinstance(i, int) and not isinstance(i, bool) for i in v.values())
        for v in data.values())
    if not ok:
        raise CheckpointError(f"{path} must map each label to {{class name: index}}; restore the "
                              "file from the original model")
    return data


def _set_label_dict(model: BmfmRnaModel, label_dict: Mapping[str, Mapping[str, int]] | None) -> None:
    model.label_dict = {k: {str(n): int(i) for n, i in v.items()} for k, v in (label_dict or {}).items()}


def _official_model(cls: type[BmfmRnaModel], cfg: BmfmRnaConfig, state_dict: Mapping[str, torch.Tensor],
                    *, weights: Path, tokenizers: Path, label_dict: Mapping | None,
                    resolved: ResolvedModel, fmt: str, **card_extra: Any) -> BmfmRnaModel:
    """The model of an official layout; ``tokenizers`` is the folder holding ``tokenizers/`` (and
    the card's path: the checkpoint folder)."""
    from biomed_toolkit.core import hub

    model = cls(cfg)
    model.load_weights(official_state_dict(state_dict), source=str(weights))
    _attach_tokenizer(model, GeneTokenizer.from_pretrained(tokenizers), tokenizers)
    _set_label_dict(model, label_dict)
    where = weights if weights.suffix == ".ckpt" else tokenizers
    model.card = hub.make_card(resolved.name, cls.family, resolved.source, where,
                               config=cfg.to_dict(), task=model.task_description(), format=fmt,
                               **card_extra)
    return model


def _from_ckpt(cls: type[BmfmRnaModel], ckpt: Path, resolved: ResolvedModel) -> BmfmRnaModel:
    from biomed_toolkit.core.safe_pickle import load_checkpoint

    raw = load_checkpoint(ckpt)
    hp = raw.get("hyper_parameters") or {}
    if "model_config" not in hp or "state_dict" not in raw:
        raise CheckpointError(
            f"{ckpt} is not an official BMFM-RNA training checkpoint (needs state_dict and "
            "hyper_parameters['model_config'])")
    cfg = config_from_official(hp["model_config"], hp.get("trainer_config"))
    return _official_model(cls, cfg, raw["state_dict"], weights=ckpt, tokenizers=ckpt.parent,
                           label_dict=hp.get("label_dict"), resolved=resolved,
                           fmt=f"official {cfg.variant} lightning ckpt",
                           global_step=raw.get("global_step"))


def _official_metadata(folder: Path) -> dict[str, Any]:
    """``hyper_parameters`` of ``checkpoint_metadata.json`` (vllm layout), or ``{}``.

    The official conversion keeps the class names (``label_dict``) and the trainer settings
    (``pooling_method``) only there, not in ``config.json``.
    """
    path = folder / "checkpoint_metadata.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    hp = data.get("hyper_parameters") if isinstance(data, dict) else None
    return hp if isinstance(hp, dict) else {}


def _from_converted_folder(cls: type[BmfmRnaModel], folder: Path,
                           resolved: ResolvedModel) -> BmfmRnaModel:
    from biomed_toolkit.core.weights import read_safetensors

    raw_cfg = json.loads((folder / CONFIG_NAME).read_text())
    hp = _official_metadata(folder)
    cfg = config_from_official(raw_cfg, hp.get("trainer_config") or raw_cfg)
    tensors, _ = read_safetensors(folder / WEIGHTS_NAME)
    label_dict = hp.get("label_dict") or raw_cfg.get("label_dict")
    return _official_model(cls, cfg, tensors, weights=folder / WEIGHTS_NAME, tokenizers=folder,
                           label_dict=label_dict, resolved=resolved,
                           fmt="official v2 config.json + safetensors")


def load_official(cls: type[BmfmRnaModel], path: Path, resolved: ResolvedModel) -> BmfmRnaModel:
    """Read an official layout (the ``BaseModel._load_official`` hook of :class:`BmfmRnaModel`).

    Raises
    ------
    CheckpointError
        For files that hold no BMFM-RNA model, a tokenizer that does not fit the weights, or a
        registered checkpoint whose inputs cannot be reproduced (see ``registry.UNREPRODUCIBLE``).
    """
    refuse_unreproducible(path, resolved.spec)
    if path.is_file():
        if path.suffix != ".ckpt":
            raise CheckpointError(f"{path}: expected a .ckpt file or a model folder")
        return _from_ckpt(cls, path, resolved)
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        return _from_converted_folder(cls, path, resolved)
    ckpts = sorted(path.glob("*.ckpt"))
    if ckpts:
        pick = path / "last.ckpt" if (path / "last.ckpt").is_file() else ckpts[0]
        if len(ckpts) > 1:
            log.info(f"{path} holds {len(ckpts)} checkpoints; loading {pick.name}")
        return _from_ckpt(cls, pick, resolved)
    raise CheckpointError(
        f"{path} holds no BMFM-RNA model: expected a .ckpt with tokenizers/, or config.json + "
        f"model.safetensors + tokenizers/ (found: {sorted(p.name for p in path.iterdir())[:10]})")


def read_extras(model: BmfmRnaModel, folder: Path) -> None:
    """What :func:`write_extras` wrote beside the weights of our own folder."""
    _attach_tokenizer(model, GeneTokenizer.from_pretrained(folder), folder)
    path = folder / LABEL_DICT_NAME
    _set_label_dict(model, _read_label_dict(path) if path.is_file() else {})
    model.pretraining_cells = load_pretraining_cells(folder)
    if any(p.name not in (WEIGHTS_NAME, PRETRAINING_CELLS_NAME) for p in folder.glob("*.safetensors")):
        # fine-tuned label heads' extras (rna.training; imported only when present: Lightning)
        from .training import load_label_extras

        load_label_extras(model, folder)


def write_extras(model: BmfmRnaModel, folder: Path) -> None:
    """``tokenizers/``, ``label_dict.json`` and the fine-tuned label extras, beside the weights."""
    if model.tokenizer is None:
        raise CheckpointError("model.tokenizer is not set: attach a GeneTokenizer before saving")
    model.tokenizer.save_pretrained(folder)
    (folder / LABEL_DICT_NAME).write_text(json.dumps(model.label_dict or {}, indent=2, sort_keys=True))
    if getattr(model, "label_extras", None):
        from .training import save_label_extras

        save_label_extras(model, folder)
    if getattr(model, "pretraining_cells", None) is not None:
        save_pretraining_cells(model.pretraining_cells, folder)


def load(name_or_path: str | os.PathLike | None = None, *,
         device: str | torch.device | None = None) -> BmfmRnaModel:
    """Load a BMFM-RNA model with its tokenizer, class names and model card.

    The same as :meth:`BmfmRnaModel.from_pretrained <biomed_toolkit.core.model.BaseModel.from_pretrained>`.

    Parameters
    ----------
    name_or_path
        ``None`` for the embedded demo model; a registered name (``bt.hub.list_models("bmfm-rna")``),
        a hub id, an official ``.ckpt`` file (v1 or v2) or its folder, an official converted v2
        folder (config.json + model.safetensors + checkpoint_metadata.json + tokenizers/), or a
        ``save_pretrained`` folder.
    device
        ``None`` / ``"auto"`` follow ``bt.settings.device``; or ``"cpu"``, ``"cuda"``, ...

    Returns
    -------
    BmfmRnaModel
        In eval mode, with ``.tokenizer``, ``.card``, ``.label_dict`` and ``.pooling``
        (``"first_token"`` for WCED checkpoints, ``"pooler"`` for MLM ones).

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> model = bt.rna.load()  # doctest: +SKIP
    >>> model = bt.rna.load("path/to/ckpt/last.ckpt")  # doctest: +SKIP
    """
    if name_or_path is not None:
        refuse_unreproducible(name_or_path)  # before any download
    return BmfmRnaModel.from_pretrained(name_or_path, device=device)
