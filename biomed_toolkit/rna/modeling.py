"""BMFM-RNA networks: v1 (post-LN BERT) and v2 (pre-RMSNorm LLaMA-like) with MLM, WCED and label heads.

Module names reproduce the official state-dict names (without Lightning's ``model.`` prefix), so
official weights load with a plain copy:

* v1 backbone ``scbert.{embeddings, encoder.layer.N, pooler}``;
* v2 backbone ``core.{encoder.embeddings, encoder.blocks.N, pooler}``;
* heads ``cls.predictions.predictions.{transform, decoder.field_decoders.<field>_<mode>}`` and
  ``cls.label_predictions.predictions.label_decoders.<label>.decoder[.1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.model import BaseModel

from .configuration import BmfmRnaConfig, Pooling

if TYPE_CHECKING:  # pragma: no cover
    from biomed_toolkit.core.hub import ResolvedModel

    from .tokenize import GeneTokenizer

__all__ = ["BmfmRnaModel", "BmfmRnaOutput", "GradientReversal", "Head", "WcedOutput"]

#: Output heads ``forward`` can run.
Head = Literal["labels", "wced", "mlm"]
_HEADS: tuple[str, ...] = Head.__args__


def _act(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()  # exact erf form, as the official "gelu"
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name in ("silu", "swish"):
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported activation {name!r}")


# ---------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------


def _special_index(x: torch.Tensor, n_rows: int, zero_special: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of special/zero positions, row of the special table for each position)."""
    special = x < 0
    if zero_special:
        special = special | (x == 0)
    idx = (-(x.long() + 1)).clamp(0, n_rows - 1)
    if zero_special:
        idx = torch.where(x == 0, torch.full_like(idx, n_rows - 1), idx)
    return special, idx


class MlpExpressionEncoder(nn.Module):
    """v1 "mlp_with_special_token_embedding": Linear(1,128)+LeakyReLU, specials/zeros looked up,
    then LeakyReLU and Linear(128, H) on both branches."""

    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        kw = config.expression_encoder_kwargs
        self.zero_as_special_token = bool(kw.get("zero_as_special_token", True))
        h = config.expression_hidden_size
        self.dense_1 = nn.Linear(1, h)
        self.dense_2 = nn.Linear(h, config.hidden_size)
        self.activation = nn.LeakyReLU()
        n = config.num_special_tokens + int(self.zero_as_special_token)
        self.special_token_embeddings = nn.Embedding(n, h, padding_idx=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        special, idx = _special_index(x, self.special_token_embeddings.num_embeddings,
                                      self.zero_as_special_token)
        cont = self.activation(self.dense_1(x.unsqueeze(-1)))
        spec = self.special_token_embeddings(idx).to(cont.dtype)
        h = torch.where(special.unsqueeze(-1), spec, cont)
        return self.dense_2(self.activation(h))


class ScaleAdaptEncoder(nn.Module):
    """v2 "scale_adapt": [sin, cos](x * basis) -> Linear(2K, H, no bias); specials/zeros looked up."""

    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        kw = config.expression_encoder_kwargs
        self.zero_as_special_token = bool(kw.get("zero_as_special_token", True))
        n_basis = int(kw.get("n_sin_basis", 48))
        scale = float(kw.get("basis_scale", 0.01))
        self.shift = float(kw.get("shift", 0.0))
        basis = torch.tensor([2 * math.pi * scale * 2.0**k for k in range(n_basis)])
        if kw.get("trainable", False):
            self.basis = nn.Parameter(basis)
        else:
            self.register_buffer("basis", basis)
        n = config.num_special_tokens + int(self.zero_as_special_token)
        self.special_token_embeddings = nn.Embedding(n, config.hidden_size,
                                                     padding_idx=config.pad_token_id)
        self.dense = nn.Linear(2 * n_basis, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.special_token_embeddings.num_embeddings
        special = x <= 0 if self.zero_as_special_token else x < 0
        _, idx = _special_index(x, n, self.zero_as_special_token)
        z = (x - self.shift).unsqueeze(-1) * self.basis
        cont = self.dense(torch.cat([torch.sin(z), torch.cos(z)], dim=-1))
        spec = self.special_token_embeddings(idx).to(cont.dtype)
        return torch.where(special.unsqueeze(-1), spec, cont)


class Embeddings(nn.Module):
    """Gene embedding + expression embedding, LayerNorm, dropout (no position embeddings)."""

    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.genes_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                             padding_idx=config.pad_token_id)
        enc = (MlpExpressionEncoder if config.expression_encoder == "mlp_with_special_token_embedding"
               else ScaleAdaptEncoder)
        self.expressions_embeddings = enc(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, genes: torch.Tensor, expressions: torch.Tensor) -> torch.Tensor:
        e = self.genes_embeddings(genes) + self.expressions_embeddings(expressions)
        return self.dropout(self.LayerNorm(e))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               dropout: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)


# ---------------------------------------------------------------------------------------------
# v1: post-LN BERT
# ---------------------------------------------------------------------------------------------


class _SelfAttention(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.n_heads = config.num_attention_heads
        self.p = config.attention_probs_dropout_prob


class _DenseLN(nn.Module):
    def __init__(self, n_in: int, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = _DenseLN(config.hidden_size, config)


class _Intermediate(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _act(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseLN(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        sa = self.attention.self
        b, n, h = x.shape
        hd = h // sa.n_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, sa.n_heads, hd).transpose(1, 2)

        ctx = _attention(split(sa.query(x)), split(sa.key(x)), split(sa.value(x)), bias,
                         sa.p if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(b, n, h)
        x = self.attention.output(ctx, x)
        return self.output(self.intermediate(x), x)


class _BertEncoder(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class Pooler(nn.Module):
    """tanh(W h_CLS + b)."""

    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_state))


class BertBackbone(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = _BertEncoder(config)
        self.pooler = Pooler(config) if config.add_pooling_layer else None

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.layer

    @property
    def input_embeddings(self) -> Embeddings:
        return self.embeddings


# ---------------------------------------------------------------------------------------------
# v2: pre-RMSNorm LLaMA-like
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.scale * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))).type_as(x)


class _LlamaAttention(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.c_attn = nn.Linear(h, 3 * h, bias=False)
        self.proj = nn.Linear(h, h, bias=False)
        self.n_heads = config.num_attention_heads
        self.p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, n, h = x.shape
        hd = h // self.n_heads
        q, k, v = (t.view(b, n, self.n_heads, hd).transpose(1, 2)
                   for t in self.c_attn(x).split(h, dim=2))
        y = _attention(q, k, v, bias, self.p if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, h))


class _SwiGLU(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        h, m = config.hidden_size, config.intermediate_size
        self.c_fc1 = nn.Linear(h, m, bias=False)
        self.c_fc2 = nn.Linear(h, m, bias=False)
        self.c_proj = nn.Linear(m, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.silu(self.c_fc1(x)) * self.c_fc2(x))


class LlamaBlock(nn.Module):
    def __init__(self, config: BmfmRnaConfig, first: bool) -> None:
        super().__init__()
        self.rms_1 = None if first else RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = _LlamaAttention(config)
        self.rms_2 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = _SwiGLU(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(x if self.rms_1 is None else self.rms_1(x), bias)
        return x + self.mlp(self.rms_2(x))


class _LlamaEncoder(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(LlamaBlock(config, i == 0) for i in range(config.num_hidden_layers))


class LlamaBackbone(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.encoder = _LlamaEncoder(config)
        self.pooler = Pooler(config) if config.add_pooling_layer else None

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.blocks

    @property
    def input_embeddings(self) -> Embeddings:
        return self.encoder.embeddings


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------


class GradientReversalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.alpha * grad, None


class GradientReversal(nn.Module):
    """Identity forward, gradient multiplied by ``-alpha`` backward (no parameters)."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GradientReversalFunction.apply(x, self.alpha)


class LabelDecoder(nn.Module):
    def __init__(self, config: BmfmRnaConfig, n_classes: int, grl: float | None) -> None:
        super().__init__()
        lin = nn.Linear(config.hidden_size, n_classes)
        self.decoder: nn.Module = lin if grl is None else nn.Sequential(GradientReversal(grl), lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x)


class _Transform(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = _act(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class _FieldDecoders(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.field_decoders = nn.ModuleDict()
        for name, (_, mode) in config.mlm_decoders.items():
            out = config.vocab_size if mode == "token_scores" else 1
            self.field_decoders[name] = nn.Linear(config.hidden_size, out)
        w = config.wced
        if w is not None:
            self.field_decoders[f"{w['field']}_wced"] = nn.Linear(
                config.hidden_size, config.vocab_size * len(w["logit_outputs"]))


class _LMHead(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.transform = _Transform(config)
        self.decoder = _FieldDecoders(config)


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.predictions = inner


class _LabelDecoders(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        self.label_decoders = nn.ModuleDict(
            {c.name: LabelDecoder(config, c.n_classes, c.gradient_reversal_coefficient)
             for c in config.label_columns})


class Heads(nn.Module):
    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__()
        has_lm = bool(config.mlm_decoders) or config.wced is not None
        self.predictions = _Wrap(_LMHead(config)) if has_lm else None
        self.label_predictions = _Wrap(_LabelDecoders(config)) if config.label_columns else None


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


@dataclass
class WcedOutput:
    """Whole-cell expression decoding from the CLS state, for every vocabulary gene.

    ``value`` (B, V): predicted log-normalised expression; ``is_zero`` (B, V): logit that the gene
    is zero (> 0 predicts zero).
    """

    value: torch.Tensor
    is_zero: torch.Tensor


@dataclass
class BmfmRnaOutput:
    """Outputs of :class:`BmfmRnaModel`.

    ``last_hidden_state`` (B, L, H); ``pooler_output`` (B, H) = tanh(dense(CLS)) or None;
    ``wced`` (when asked); ``label_logits`` {label: (B, n_classes)}; ``mlm_logits``
    {"<field>_<mode>": (B, L, V) or (B, L)} (when asked); ``hidden_states`` (embedding output
    and each layer) when asked.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    wced: WcedOutput | None = None
    label_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    mlm_logits: dict[str, torch.Tensor] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def cls_embedding(self) -> torch.Tensor:
        """Raw CLS state (B, H): the "first_token" embedding."""
        return self.last_hidden_state[:, 0]


class BmfmRnaModel(BaseModel):
    """BMFM-RNA encoder with its heads.

    Loading and saving are :class:`~biomed_toolkit.core.model.BaseModel`'s
    (``from_pretrained`` / ``save_pretrained``); official layouts are read by
    :mod:`biomed_toolkit.rna.loading`.

    Parameters
    ----------
    config
        :class:`BmfmRnaConfig`.

    Attributes
    ----------
    tokenizer
        :class:`~biomed_toolkit.rna.tokenize.GeneTokenizer` (set by loading).
    label_dict
        ``{label: {class name: index}}``.
    pooling
        Default cell embedding (``config.pooling``): ``"first_token"`` for WCED checkpoints,
        ``"pooler"`` for MLM ones.

    Examples
    --------
    >>> import torch
    >>> from biomed_toolkit.rna.configuration import BmfmRnaConfig
    >>> cfg = BmfmRnaConfig.v1(vocab_size=20, hidden_size=16, num_hidden_layers=1,
    ...                        num_attention_heads=2, intermediate_size=32)
    >>> m = BmfmRnaModel(cfg).eval()
    >>> out = m(torch.tensor([[3, 7, 1]]), torch.tensor([[-4.0, 2.5, -2.0]]), torch.ones(1, 3))
    >>> tuple(out.last_hidden_state.shape)
    (1, 3, 16)
    """

    config_class = BmfmRnaConfig
    family = "bmfm-rna"
    config: BmfmRnaConfig

    def __init__(self, config: BmfmRnaConfig) -> None:
        super().__init__(config)
        if config.variant == "v1":
            self.scbert = BertBackbone(config)
        else:
            self.core = LlamaBackbone(config)
        self.cls = Heads(config)
        self.tokenizer: GeneTokenizer | None = None
        self.label_dict: dict[str, dict[str, int]] = {}
        self.init_weights()

    # structure -----------------------------------------------------------------------------
    @property
    def backbone(self) -> BertBackbone | LlamaBackbone:
        return self.scbert if self.config.variant == "v1" else self.core

    @property
    def pooling(self) -> Pooling:
        """Default cell embedding; stored in (and saved with) ``config.pooling``."""
        return self.config.pooling

    @pooling.setter
    def pooling(self, value: Pooling) -> None:
        if value not in Pooling.__args__:
            raise InputError(f"pooling must be one of {Pooling.__args__}, got {value!r}")
        self.config.pooling = value

    def task_description(self) -> str:
        c = self.config
        return "WCED + multitask" if c.wced else ("MLM" if c.mlm_decoders else "encoder")

    def lora_targets(self) -> list[str]:
        """Attention projections LoRA adapts (v1: query/value, v2: the fused c_attn)."""
        return ["query", "value"] if self.config.variant == "v1" else ["c_attn"]

    def _freeze_patterns(self, n_blocks: int) -> list[str]:
        names = {id(m): n for n, m in self.named_modules()}
        bb = self.backbone
        if not 0 < n_blocks <= len(bb.blocks):
            raise InputError(f"freeze={n_blocks}: the model has {len(bb.blocks)} layers")
        blocks = names[id(bb.blocks)]
        return [f"{names[id(bb.input_embeddings)]}.*", *[f"{blocks}.{i}.*" for i in range(n_blocks)]]

    def init_weights(self, std: float = 0.02) -> None:
        """BERT-style init: N(0, std) weights, zero biases, unit norms; PAD rows zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def label_names(self, label: str) -> list[str]:
        """Class names of a label head, ordered by logit index."""
        mapping = self.label_dict.get(label)
        n = next(c.n_classes for c in self.config.label_columns if c.name == label)
        if not mapping:
            return [str(i) for i in range(n)]
        names = [str(i) for i in range(n)]
        for k, v in mapping.items():
            if int(v) < n:
                names[int(v)] = str(k)
        return names

    # forward -------------------------------------------------------------------------------
    def encode(
        self,
        genes: torch.Tensor,
        expressions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run embeddings + transformer only; returns (last_hidden_state, hidden_states)."""
        bb = self.backbone
        x = bb.input_embeddings(genes.long(), expressions.to(bb.input_embeddings.LayerNorm.weight.dtype))
        bias = None
        if attention_mask is not None:
            m = attention_mask.to(x.dtype)
            bias = ((1.0 - m) * torch.finfo(x.dtype).min)[:, None, None, :]
        hs = [x] if output_hidden_states else None
        for blk in bb.blocks:
            x = blk(x, bias)
            if hs is not None:
                hs.append(x)
        return x, (tuple(hs) if hs is not None else None)

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor | None:
        pooler = self.backbone.pooler
        return None if pooler is None else pooler(last_hidden_state[:, 0])

    def decode_wced(self, cls_state: torch.Tensor) -> WcedOutput:
        """WCED values and is-zero logits for every vocabulary gene from CLS states (B, H)."""
        w = self.config.wced
        if w is None or self.cls.predictions is None:
            raise ValueError("this model has no WCED decoder")
        lm = self.cls.predictions.predictions
        out = lm.decoder.field_decoders[f"{w['field']}_wced"](lm.transform(cls_state))
        out = out.view(cls_state.shape[0], self.config.vocab_size, len(w["logit_outputs"]))
        outs = w["logit_outputs"]
        value = out[..., outs.index("mse")] if "mse" in outs else out[..., 0]
        is_zero = out[..., outs.index("is_zero_bce")] if "is_zero_bce" in outs else out[..., -1]
        return WcedOutput(value=value, is_zero=is_zero)

    def decode_mlm(self, last_hidden_state: torch.Tensor) -> dict[str, torch.Tensor]:
        """MLM logits at every position for each ``<field>_<mode>`` decoder."""
        if not self.config.mlm_decoders:
            raise ValueError("this model has no MLM decoder")
        lm = self.cls.predictions.predictions
        t = lm.transform(last_hidden_state)
        out = {}
        for name, (_, mode) in self.config.mlm_decoders.items():
            y = lm.decoder.field_decoders[name](t)
            out[name] = y if mode == "token_scores" else y.squeeze(-1)
        return out

    def classify(
        self,
        last_hidden_state: torch.Tensor,
        labels: Sequence[str] | None = None,
        *,
        pooler_output: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Label-head logits.

        A head with ``decode_from`` (v2) reads the raw last hidden state at that position; the
        others read the pooler output (computed here unless ``pooler_output`` is given).
        """
        if self.cls.label_predictions is None:
            return {}
        decs = self.cls.label_predictions.predictions.label_decoders
        names = list(decs.keys()) if labels is None else list(labels)
        where = {c.name: c.decode_from for c in self.config.label_columns}
        out = {}
        for n in names:
            pos = where[n]
            if pos is None:
                if pooler_output is None:
                    pooler_output = self.pool(last_hidden_state)
                if pooler_output is None:
                    raise ValueError(f"label head {n!r} reads the pooler, but this model has none")
                out[n] = decs[n](pooler_output)
            else:
                out[n] = decs[n](last_hidden_state[:, pos])
        return out

    def forward(
        self,
        genes: torch.Tensor,
        expressions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        heads: Literal["default", "all"] | Head | Sequence[Head] | None = "default",
        output_hidden_states: bool = False,
    ) -> BmfmRnaOutput:
        """Encode cells and run the requested heads.

        Parameters
        ----------
        genes, expressions, attention_mask
            (B, L) tensors as made by :func:`biomed_toolkit.rna.encode_cells`.
        heads
            ``"default"``: the label heads and WCED (CLS only, cheap) when the model has them;
            or any of ``"labels"``, ``"wced"``, ``"mlm"`` (every position, costly); ``"all"``
            (every head the model has); ``None`` (encoder and pooler only).
        """
        if heads == "default":
            heads = tuple(h for h, ok in zip(
                ("labels", "wced"), (bool(self.config.label_columns), self.config.wced is not None)) if ok)
        if heads == "all":
            heads = tuple(h for h, ok in zip(
                _HEADS, (bool(self.config.label_columns), self.config.wced is not None,
                         bool(self.config.mlm_decoders))) if ok)
        heads = () if heads is None else ((heads,) if isinstance(heads, str) else tuple(heads))
        bad = set(heads) - set(_HEADS)
        if bad:
            raise ValueError(f"unknown heads {sorted(bad)}; choose from {_HEADS}")
        h, hs = self.encode(genes, expressions, attention_mask,
                            output_hidden_states=output_hidden_states)
        pooled = self.pool(h)
        out = BmfmRnaOutput(last_hidden_state=h, pooler_output=pooled, hidden_states=hs)
        if "labels" in heads:
            out.label_logits = self.classify(h, pooler_output=pooled)
        if "wced" in heads:
            out.wced = self.decode_wced(h[:, 0])
        if "mlm" in heads:
            out.mlm_logits = self.decode_mlm(h)
        return out

    # persistence (BaseModel hooks) -----------------------------------------------------------
    @classmethod
    def _load_official(cls, path: Path, resolved: ResolvedModel) -> Self:
        """An official layout: a Lightning ``.ckpt`` or a converted ("vllm") folder."""
        from .loading import load_official

        return load_official(cls, path, resolved)

    def _load_extras(self, folder: Path) -> None:
        """Tokenizer (``tokenizers/``), class names (``label_dict.json``), fine-tuned label extras."""
        from .loading import read_extras

        read_extras(self, folder)

    def _save_extras(self, folder: Path) -> None:
        from .loading import write_extras

        write_extras(self, folder)

    def extra_repr(self) -> str:
        c = self.config
        return (f"variant={c.variant}, vocab={c.vocab_size}, hidden={c.hidden_size}, "
                f"layers={c.num_hidden_layers}, heads={c.num_attention_heads}")
