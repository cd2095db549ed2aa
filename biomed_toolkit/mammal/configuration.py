"""``MammalConfig``: the official ``config.json`` layout (nested ``t5_config``) as a dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from biomed_toolkit.core.config import BaseConfig, UnknownKeys, bounded

if TYPE_CHECKING:  # pragma: no cover
    from transformers import T5Config

# The published MAMMAL base (T5 v1.1-base sized); used when a field is missing.
DEFAULT_T5: dict[str, Any] = {
    "vocab_size": 100001,
    "d_model": 768,
    "d_ff": 2048,
    "d_kv": 64,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "decoder_start_token_id": 16,
    "eos_token_id": 5,
    "pad_token_id": 1,
    "tie_word_embeddings": False,
    "is_encoder_decoder": True,
}


@dataclass
class MammalConfig(BaseConfig):
    """Configuration of a :class:`~biomed_toolkit.mammal.modeling.MammalModel`.

    Reads and writes the official ``config.json`` (no ``model_type`` key; keys it does not know
    are ignored, as the official files carry many). ``t5_config`` keys left out take the published
    MAMMAL base values (:data:`DEFAULT_T5`).

    Attributes
    ----------
    t5_config
        Keyword arguments of ``transformers.T5Config``.
    encoder_head_layers, encoder_head_dropout
        Hidden sizes and dropout of the per-position encoder head MLP.
    scalars_prediction_head
        ``{"layers": [...], "dropout": float, "num_classes": 1}``.
    support_input_scalars
        Whether ``project_input_scalars`` (Linear 1 -> d_model) exists.
    normalization
        Ours: per-task de-normalisation stats, e.g. ``{"dti": {"mean": 5.79, "std": 1.34}}``.
    extra
        Ours: free-form provenance (training record pointer, demo vocabulary, ...).

    Examples
    --------
    >>> cfg = MammalConfig.from_dict({"t5_config": {"d_model": 64}, "unknown_key": 1})
    >>> cfg.d_model
    64
    """

    model_type: ClassVar[str | None] = None
    unknown_keys: ClassVar[UnknownKeys] = "ignore"

    t5_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_T5))
    encoder_head_layers: list[int] = field(default_factory=lambda: [2048, 1024])
    encoder_head_dropout: float = bounded(0.2, ge=0.0, lt=1.0)
    scalars_prediction_head: dict[str, Any] | None = field(
        default_factory=lambda: {"dropout": 0.0, "layers": [], "num_classes": 1}
    )
    support_input_scalars: bool = True
    use_lora: bool = False
    random_weights: bool = False
    auxiliary_encoder_heads: Any = None
    normalization: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.t5_config = {**DEFAULT_T5, **dict(self.t5_config or {})}

    @property
    def d_model(self) -> int:
        return int(self.t5_config.get("d_model", DEFAULT_T5["d_model"]))

    @property
    def vocab_size(self) -> int:
        return int(self.t5_config.get("vocab_size", DEFAULT_T5["vocab_size"]))

    def to_t5_config(self) -> T5Config:
        """A ``transformers.T5Config`` with the lm_head untied and no decoder-output rescale.

        transformers 5 forces ``tie_word_embeddings=True`` in ``T5Config`` and derives
        ``scale_decoder_outputs`` from the key it pops, so both are set back explicitly here.
        """
        from transformers import T5Config

        known = set(DEFAULT_T5) | {
            "d_kv",
            "initializer_factor",
            "dense_act_fn",
            "is_gated_act",
            "classifier_dropout",
            "use_cache",
        }
        kw = {k: v for k, v in self.t5_config.items() if k in known and k not in ("dense_act_fn", "is_gated_act")}
        tie = bool(self.t5_config.get("tie_word_embeddings", False))
        kw["tie_word_embeddings"] = tie
        cfg = T5Config(**kw)
        cfg.tie_word_embeddings = tie
        cfg.scale_decoder_outputs = bool(self.t5_config.get("scale_decoder_outputs", tie))
        return cfg


__all__ = ["DEFAULT_T5", "MammalConfig"]
