"""Configuration of BMFM-RNA models (v1 SCBert-like and v2 LLaMA-like).

The JSON round trip (``to_dict``, ``from_dict``, ``to_json_file``, ``from_json_file``) is
:class:`biomed_toolkit.core.config.BaseConfig`'s; this module declares the fields, their option
strings and the checks of a valid architecture.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from biomed_toolkit.core.config import BaseConfig, UnknownKeys, bounded
from biomed_toolkit.core.errors import CheckpointError

__all__ = ["Activation", "BmfmRnaConfig", "ExpressionEncoder", "LabelColumn", "Pooling",
           "Variant", "llama_mlp_size"]

#: Architecture family: ``"v1"`` post-LN BERT, ``"v2"`` pre-RMSNorm LLaMA-like.
Variant = Literal["v1", "v2"]
#: Expression encoders of the released checkpoints.
ExpressionEncoder = Literal["mlp_with_special_token_embedding", "scale_adapt"]
#: Cell embedding: raw CLS state, tanh pooler on it, or mean over the gene positions.
Pooling = Literal["first_token", "pooler", "mean"]
#: Activations of the feed-forward blocks (the names transformers uses).
Activation = Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", "relu"]

_MLM_MODES = ("token_scores", "regression", "is_zero")


@dataclass
class LabelColumn:
    """A label head.

    ``decode_from`` None -> the head reads the pooler output (v1); an integer -> it reads the raw
    last hidden state at that token position (v2: ``[CLS_0]`` = 1 .. ``[CLS_3]`` = 4).
    ``gradient_reversal_coefficient`` set -> the head sits behind a gradient-reversal layer
    (adversarial, e.g. donor/batch removal).
    """

    name: str
    n_classes: int
    gradient_reversal_coefficient: float | None = None
    classifier_depth: int = 1
    decode_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BmfmRnaConfig(BaseConfig):
    """Architecture and heads of a BMFM-RNA model.

    ``variant="v1"``: post-LN BERT (biases, GELU, LayerNorm). ``variant="v2"``: pre-RMSNorm
    LLaMA-like blocks (no biases, SwiGLU, first block without first norm, no final norm).

    ``decode_modes`` mirrors the official per-field setting, e.g.
    ``{"expressions": {"wced": {"vocab_field": "genes", "logit_outputs": ["mse", "is_zero_bce"]}}}``
    for WCED, or ``{"genes": {"token_scores": {}}, "expressions": {"regression": {},
    "is_zero": {}}}`` for MLM. Decoder names are ``<field>_<mode>`` as in official checkpoints.

    Examples
    --------
    >>> cfg = BmfmRnaConfig.v1(vocab_size=100, hidden_size=32, num_hidden_layers=2,
    ...                        num_attention_heads=2, intermediate_size=64)
    >>> BmfmRnaConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    model_type: ClassVar[str | None] = "biomed_toolkit.bmfm_rna"
    unknown_keys: ClassVar[UnknownKeys] = "error"
    nested: ClassVar[dict[str, type]] = {"label_columns": LabelColumn}

    variant: Variant = "v1"
    vocab_size: int = bounded(19_288, ge=1)
    hidden_size: int = bounded(768, ge=1)
    num_hidden_layers: int = bounded(12, ge=1)
    num_attention_heads: int = bounded(12, ge=1)
    intermediate_size: int = bounded(3072, ge=1)
    hidden_act: Activation = "gelu"
    layer_norm_eps: float = bounded(1e-12, gt=0.0, lt=1.0)
    rms_norm_eps: float = bounded(1e-5, gt=0.0, lt=1.0)
    hidden_dropout_prob: float = bounded(0.1, ge=0.0, lt=1.0)
    attention_probs_dropout_prob: float = bounded(0.1, ge=0.0, lt=1.0)
    classifier_dropout: float = bounded(0.1, ge=0.0, lt=1.0)
    pad_token_id: int = 2
    num_special_tokens: int = bounded(5, ge=1)
    expression_encoder: ExpressionEncoder = "mlp_with_special_token_embedding"
    expression_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    expression_hidden_size: int = bounded(128, ge=1)
    n_cls_tokens: int = bounded(1, ge=1)
    decode_modes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    label_columns: list[LabelColumn] = field(default_factory=list)
    add_pooling_layer: bool = True
    pooling: Pooling = "first_token"
    limit_genes: str | None = "protein_coding"
    gene_field: str = "genes"
    expression_field: str = "expressions"
    #: tokens per cell the model was trained with; the tools' ``max_length`` default (None: 1024)
    max_length: int | None = bounded(None, ge=3)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError("hidden_size must be a multiple of num_attention_heads")
        self.label_columns = [
            c if isinstance(c, LabelColumn) else LabelColumn(**c) for c in self.label_columns
        ]
        for col in self.label_columns:
            if col.classifier_depth != 1:
                raise CheckpointError(
                    f"label head {col.name!r}: classifier_depth {col.classifier_depth} not supported"
                )
            if col.decode_from is not None and not 0 <= col.decode_from < self.n_cls_tokens:
                raise CheckpointError(
                    f"label head {col.name!r} decodes from position {col.decode_from}, but the "
                    f"model has {self.n_cls_tokens} leading CLS token(s)")

    # presets -------------------------------------------------------------------------------
    @classmethod
    def v1(cls, **kwargs: Any) -> BmfmRnaConfig:
        """v1 (``biomed.rna.bert.110m.*``): 12 x 768 post-LN BERT, MLP expression encoder."""
        base: dict[str, Any] = {"variant": "v1", "expression_encoder": "mlp_with_special_token_embedding",
                                "expression_encoder_kwargs": {"zero_as_special_token": True}}
        base.update(kwargs)
        return cls(**base)

    @classmethod
    def v2(cls, **kwargs: Any) -> BmfmRnaConfig:
        """v2 (``biomed.rna.llama.47m.*``): 12 x 384 pre-RMSNorm LLaMA-like, scale_adapt, 5 CLS."""
        hidden = kwargs.get("hidden_size", 384)
        base: dict[str, Any] = {
            "variant": "v2", "hidden_size": 384, "num_attention_heads": 12,
            "intermediate_size": llama_mlp_size(hidden), "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "expression_encoder": "scale_adapt",
            "expression_encoder_kwargs": {"n_sin_basis": 48, "basis_scale": 0.01,
                                          "trainable": False, "zero_as_special_token": True},
            "n_cls_tokens": 5,
        }
        base.update(kwargs)
        return cls(**base)

    # derived -------------------------------------------------------------------------------
    @property
    def wced(self) -> dict[str, Any] | None:
        """The WCED decoder spec ``{"field", "vocab_field", "logit_outputs"}`` or None."""
        for fname, modes in self.decode_modes.items():
            if "wced" in modes:
                spec = modes["wced"]
                return {"field": fname, "vocab_field": spec.get("vocab_field", self.gene_field),
                        "logit_outputs": list(spec.get("logit_outputs", ["mse", "is_zero_bce"]))}
        return None

    @property
    def mlm_decoders(self) -> dict[str, tuple[str, str]]:
        """``{"<field>_<mode>": (field, mode)}`` for MLM decoders (token_scores/regression/is_zero)."""
        return {f"{f}_{m}": (f, m) for f, modes in self.decode_modes.items()
                for m in modes if m in _MLM_MODES}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def label_names(self) -> list[str]:
        return [c.name for c in self.label_columns]


def llama_mlp_size(hidden: int) -> int:
    """SwiGLU width of the v2 blocks: int(8 * hidden / 3) rounded up to a multiple of 256."""
    n = int(2 * 4 * hidden / 3)
    return int(math.ceil(n / 256) * 256)
