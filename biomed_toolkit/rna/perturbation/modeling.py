"""``PerturbationModel``: a BMFM-RNA encoder with a perturbation token field and a per-gene head.

Input (as in the BMFM-RNA perturbation task): a control cell over a fixed gene panel (zeros
included, so every panel gene gets a prediction) plus a 0/1 ``perturbations`` token field that
flags the perturbed gene(s). The field is embedded and added to the gene embedding before the
embedding LayerNorm. Predictions are residual on the control expression, so an untrained head
predicts "no change".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ...core.config import BaseConfig
from ...core.errors import InputError
from ...core.model import BaseModel
from ..modeling import BmfmRnaModel
from .configuration import PerturbationConfig

if TYPE_CHECKING:  # pragma: no cover
    from ...core.hub import ResolvedModel


class PerturbationModel(BaseModel):
    """A BMFM-RNA encoder (``.base``) with a perturbation embedding and an expression head.

    ``forward(expressions, flags)`` takes the control cell's log-normalised panel values
    (B, P) and perturbation flags (B, P), and returns ``(value, is_zero_logit)`` (B, P) each.
    ``predict_expression`` gives the expected expression ``value * P(nonzero)``.

    Loading and saving are the toolkit's one lifecycle: ``PerturbationModel.from_pretrained(dir)``
    reads a folder written by ``save_pretrained`` (``config.json`` with the panel and the encoder's
    configuration, ``model.safetensors``, the encoder's tokenizer); folders of the earlier
    two-file layout (``perturbation_head.safetensors`` beside the encoder) load too.

    Examples
    --------
    >>> pm = PerturbationModel.from_base(bt.rna.load(), ["CD3E", "LYZ"])  # doctest: +SKIP
    >>> pm.save_pretrained("pm"); PerturbationModel.from_pretrained("pm")  # doctest: +SKIP
    """

    config_class: ClassVar[type[BaseConfig]] = PerturbationConfig
    # A BMFM-RNA model: hub names resolve in that family; MODEL_CLASSES keeps BmfmRnaModel.
    family: ClassVar[str] = "bmfm-rna"
    config: PerturbationConfig

    def __init__(self, config: PerturbationConfig, base: BmfmRnaModel | None = None) -> None:
        super().__init__(config)
        if base is not None and base.config is not config.base:
            raise InputError("base= must be the encoder whose config is config.base; "
                             "use PerturbationModel.from_base(encoder, genes)")
        self.base = base if base is not None else BmfmRnaModel(config.base)
        self.n_cls = config.base.n_cls_tokens
        h = config.base.hidden_size
        self.perturbation_embeddings = nn.Embedding(2, h)
        nn.init.normal_(self.perturbation_embeddings.weight, std=0.02)
        with torch.no_grad():
            self.perturbation_embeddings.weight[0].zero_()  # unflagged genes: unchanged input
        self.head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, 2))
        self.register_buffer("gene_ids", torch.empty(0, dtype=torch.long), persistent=False)
        self._flags: torch.Tensor | None = None
        gene_emb = self.base.backbone.input_embeddings.genes_embeddings
        self._hook = gene_emb.register_forward_hook(self._add_flags)
        if self.base.tokenizer is not None:
            self._set_panel()
        self.card = self.base.card

    @classmethod
    def from_base(cls, base: BmfmRnaModel, genes: Sequence[str]) -> PerturbationModel:
        """A new (untrained) head over ``genes`` on the encoder ``base`` (used, not copied)."""
        return cls(PerturbationConfig(genes=list(genes), base=base.config), base)

    @property
    def genes(self) -> list[str]:
        """The gene panel, in prediction order."""
        return self.config.genes

    def _set_panel(self) -> None:
        """Token ids of [CLS]..., the panel genes and [SEP] (needs the encoder's tokenizer)."""
        tok = self.base.tokenizer
        if tok is None:
            raise InputError("the encoder has no tokenizer: load it with bt.rna.load first")
        ids = tok.gene_ids(self.genes)
        if (ids < 0).any():
            bad = [g for g, i in zip(self.genes, ids) if i < 0]
            raise InputError(f"panel genes {bad[:10]} are not in the model vocabulary")
        self.gene_ids = torch.as_tensor([*tok.cls_token_ids(self.n_cls), *ids.tolist(), 1],
                                        dtype=torch.long, device=self.gene_ids.device)

    # what core.finetune.finetune_model needs (the encoder's, under ``base.``) ------------------
    def lora_targets(self) -> list[str]:
        return self.base.lora_targets()

    def _freeze_patterns(self, n_blocks: int) -> list[str]:
        return [f"base.{p}" for p in self.base._freeze_patterns(n_blocks)]

    def task_description(self) -> str:
        return f"perturbation ({len(self.genes)} genes)"

    # network ---------------------------------------------------------------------------------
    def _add_flags(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                   output: torch.Tensor) -> torch.Tensor:
        if self._flags is None:
            return output
        return output + self.perturbation_embeddings(self._flags)

    def forward(self, expressions: torch.Tensor, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..tokenize import special_value, special_values

        b, p = expressions.shape
        dev = expressions.device
        # each leading CLS token carries its own code (v2: -4, -6, ..., -9; v1: -4)
        cls_vals = torch.as_tensor(special_values(self.gene_ids[:self.n_cls].tolist()), device=dev)
        sep_val = special_value(1)
        expr = torch.cat([
            cls_vals.expand(b, -1),
            expressions.float(),
            torch.full((b, 1), sep_val, device=dev),
        ], dim=1)
        genes = self.gene_ids.to(dev).unsqueeze(0).expand(b, -1)
        pad = torch.zeros((b, self.n_cls), dtype=torch.long, device=dev)
        self._flags = torch.cat([pad, flags.long(), pad[:, :1]], dim=1)
        try:
            hidden, _ = self.base.encode(genes, expr)
        finally:
            self._flags = None
        out = self.head(hidden[:, self.n_cls:self.n_cls + p])
        value = expressions.float() + out[..., 0]  # residual: untrained head = no change
        return value, out[..., 1]

    @torch.no_grad()
    def predict_expression(self, expressions: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        value, is_zero = self.forward(expressions, flags)
        return value.clamp_min(0) * torch.sigmoid(-is_zero)

    # lifecycle hooks -------------------------------------------------------------------------
    @classmethod
    def _load_official(cls, path: Path, resolved: ResolvedModel) -> PerturbationModel:
        """The earlier two-file layout (encoder folder + ``perturbation_head.safetensors``)."""
        from .loading import load_two_file_layout

        return load_two_file_layout(cls, path)

    def _load_extras(self, folder: Path) -> None:
        self.base._load_extras(folder)
        self._set_panel()

    def _save_extras(self, folder: Path) -> None:
        self.base._save_extras(folder)


__all__ = ["PerturbationModel"]
