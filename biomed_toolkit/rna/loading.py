"""Loading and saving BMFM-RNA models: official v1 ``.ckpt``, official v2 folders, our own folders.

* official v1: a Lightning ``.ckpt`` (read only through ``core.safe_pickle.load_checkpoint``) with
  ``tokenizers/<field>/`` next to it; the path may be the file or its folder;
* official v2 ("vllm" repos): ``config.json`` (official field/label layout) + ``model.safetensors``;
* ours: ``config.json`` (``model_type = biomed_toolkit.bmfm_rna``) + ``model.safetensors`` +
  ``tokenizers/`` + ``label_dict.json``, as written by :func:`save_pretrained`.

State-dict names are the official ones, so weights are copied without renaming (only the
Lightning ``model.`` prefix is stripped).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.core.log import get_logger

from .configuration import BmfmRnaConfig, LabelColumn, llama_mlp_size

__all__ = ["config_from_official", "load", "save_pretrained"]

log = get_logger(__name__)

FAMILY = "bmfm-rna"
_POOLING = {"first_token": "first_token", "pooling_layer": "pooler", "mean_pooling": "mean",
            "pooler": "pooler", "mean": "mean"}
_SUPPORTED_MODES = ("token_scores", "regression", "is_zero", "wced")


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _plain(obj: Any) -> Any:
    return obj.to_dict() if hasattr(obj, "to_dict") and not isinstance(obj, dict) else obj


def config_from_official(
    model_config: Any, trainer_config: Any = None, *, variant: str | None = None
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


def _prepare_state_dict(sd: dict[str, Any], model: Any) -> dict[str, Any]:
    out = {}
    for k, v in sd.items():
        if k.startswith("model."):
            k = k[len("model."):]
        # MLM-only official models hold the LM head directly under cls.predictions
        if k.startswith("cls.predictions.") and not k.startswith("cls.predictions.predictions."):
            k = "cls.predictions.predictions." + k[len("cls.predictions."):]
        if k.endswith("position_ids"):
            continue
        out[k] = v
    return out


def _attach(model: Any, *, tokenizer: Any, label_dict: dict, card: Any, device: Any) -> Any:
    from biomed_toolkit.core.device import resolve_device

    model.tokenizer = tokenizer
    tokenizer.n_cls_tokens = model.config.n_cls_tokens
    model.label_dict = {k: {str(n): int(i) for n, i in v.items()} for k, v in (label_dict or {}).items()}
    model.card = card
    model.pooling = model.config.pooling
    return model.to(resolve_device(device)).eval()


def _card(name: str, source: str, path: Path, cfg: BmfmRnaConfig, **extra: Any) -> Any:
    from biomed_toolkit.core.hub import make_card

    task = "WCED + multitask" if cfg.wced else ("MLM" if cfg.mlm_decoders else "encoder")
    return make_card(name, FAMILY, source, path, config=cfg.to_dict(), task=task, **extra)


def _load_official_ckpt(ckpt: Path, *, name: str, source: str, device: Any) -> Any:
    from biomed_toolkit.core.safe_pickle import load_checkpoint
    from biomed_toolkit.core.weights import load_state_dict

    from .modeling import BmfmRnaModel
    from .tokenize import GeneTokenizer

    raw = load_checkpoint(ckpt)
    hp = raw.get("hyper_parameters") or {}
    if "model_config" not in hp or "state_dict" not in raw:
        raise CheckpointError(
            f"{ckpt} is not an official BMFM-RNA training checkpoint (needs state_dict and "
            "hyper_parameters['model_config'])")
    cfg = config_from_official(hp["model_config"], hp.get("trainer_config"))
    model = BmfmRnaModel(cfg)
    load_state_dict(model, _prepare_state_dict(raw["state_dict"], model), source=str(ckpt))
    tok = GeneTokenizer.from_pretrained(ckpt.parent)
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer next to {ckpt} has {tok.vocab_size} genes but the model expects "
            f"{cfg.vocab_size}: the tokenizers/ folder belongs to another checkpoint")
    label_dict = {k: dict(v) for k, v in (hp.get("label_dict") or {}).items()}
    card = _card(name, source, ckpt, cfg, format="official v1 lightning ckpt",
                 global_step=raw.get("global_step"))
    return _attach(model, tokenizer=tok, label_dict=label_dict, card=card, device=device)


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


def _load_folder(folder: Path, *, name: str, source: str, device: Any) -> Any:
    from biomed_toolkit.core.weights import load_state_dict, read_safetensors

    from .modeling import BmfmRnaModel
    from .tokenize import GeneTokenizer

    with open(folder / "config.json") as fh:
        raw_cfg = json.load(fh)
    own = BmfmRnaConfig.is_own_format(raw_cfg)
    hp = {} if own else _official_metadata(folder)
    cfg = (BmfmRnaConfig.from_dict(raw_cfg) if own
           else config_from_official(raw_cfg, hp.get("trainer_config") or raw_cfg))
    model = BmfmRnaModel(cfg)
    tensors, _ = read_safetensors(folder / "model.safetensors")
    load_state_dict(model, _prepare_state_dict(tensors, model), source=str(folder / "model.safetensors"))
    tok = GeneTokenizer.from_pretrained(folder)
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer in {folder} has {tok.vocab_size} tokens, the model expects {cfg.vocab_size}")
    label_dict: dict = {}
    if (folder / "label_dict.json").is_file():
        with open(folder / "label_dict.json") as fh:
            label_dict = json.load(fh)
    elif hp.get("label_dict"):
        label_dict = hp["label_dict"]
    elif not own and raw_cfg.get("label_dict"):
        label_dict = raw_cfg["label_dict"]
    card = _card(name, source, folder, cfg,
                 format="biomed_toolkit folder" if own else "official v2 config.json + safetensors")
    return _attach(model, tokenizer=tok, label_dict=label_dict, card=card, device=device)


def load(name_or_path: str | os.PathLike | None = None, *, device: Any = "auto") -> Any:
    """Load a BMFM-RNA model with its tokenizer, label dictionary and model card.

    Parameters
    ----------
    name_or_path
        ``None`` for the embedded demo model; a registered name (``bt.hub.list_models("bmfm-rna")``),
        a hub id, an official v1 ``.ckpt`` file or its folder, an official v2 folder
        (config.json + model.safetensors + tokenizers/), or a :func:`save_pretrained` folder.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...

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
    from biomed_toolkit.core import hub

    if name_or_path is None:
        spec = hub.default_model(FAMILY)
        hub.verify_embedded(spec)
        assert spec.path is not None
        path, name, source = spec.path, spec.name, "embedded"
    else:
        res = hub.resolve(name_or_path, family=FAMILY)
        path, name, source = Path(res.path), res.name, res.source
    if path.is_file():
        if path.suffix != ".ckpt":
            raise CheckpointError(f"{path}: expected a .ckpt file or a model folder")
        return _load_official_ckpt(path, name=name, source=source, device=device)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _load_folder(path, name=name, source=source, device=device)
    ckpts = sorted(path.glob("*.ckpt"))
    if ckpts:
        pick = path / "last.ckpt" if (path / "last.ckpt").is_file() else ckpts[0]
        if len(ckpts) > 1:
            log.info(f"{path} holds {len(ckpts)} checkpoints; loading {pick.name}")
        return _load_official_ckpt(pick, name=name, source=source, device=device)
    raise CheckpointError(
        f"{path} holds no BMFM-RNA model: expected a .ckpt with tokenizers/, or config.json + "
        f"model.safetensors + tokenizers/ (found: {sorted(p.name for p in path.iterdir())[:10]})")


def save_pretrained(model: Any, directory: str | os.PathLike) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``tokenizers/`` and ``label_dict.json``.

    :func:`load` on the folder gives back bit-identical weights.
    """
    from biomed_toolkit.core.weights import save_safetensors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.pooling = getattr(model, "pooling", model.config.pooling)
    model.config.to_json_file(directory / "config.json")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, directory / "model.safetensors")
    if model.tokenizer is None:
        raise CheckpointError("model.tokenizer is not set: attach a GeneTokenizer before saving")
    model.tokenizer.save_pretrained(directory)
    with open(directory / "label_dict.json", "w") as fh:
        json.dump(model.label_dict or {}, fh, indent=2, sort_keys=True)
    return directory
