"""``PerturbationConfig``: the gene panel of a perturbation model and its encoder's configuration."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...core.config import BaseConfig, UnknownKeys
from ..configuration import BmfmRnaConfig


@dataclasses.dataclass
class PerturbationConfig(BaseConfig):
    """A BMFM-RNA encoder with a perturbation token field and a per-gene expression head.

    Parameters
    ----------
    genes
        The gene panel, in prediction order (every gene must be in the encoder's vocabulary).
    base
        Configuration of the BMFM-RNA encoder underneath.

    Examples
    --------
    >>> base = BmfmRnaConfig.v1(vocab_size=100, hidden_size=32, num_hidden_layers=2,
    ...                         num_attention_heads=2, intermediate_size=64)
    >>> cfg = PerturbationConfig(genes=["CD3E", "LYZ"], base=base)
    >>> PerturbationConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    model_type: ClassVar[str | None] = "biomed_toolkit.bmfm_rna_perturbation"
    unknown_keys: ClassVar[UnknownKeys] = "error"
    nested: ClassVar[dict[str, type]] = {"base": BmfmRnaConfig}

    genes: list[str] = dataclasses.field(default_factory=list)
    base: BmfmRnaConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.genes = [str(g) for g in self.genes]
        if self.base is None:
            raise ValueError("a PerturbationConfig needs the encoder's BmfmRnaConfig (base=)")
        if len(set(self.genes)) != len(self.genes):
            raise ValueError("the gene panel lists a gene twice")
