"""Official MAMMAL checkpoints and the pickled class paths their Lightning files may hold.

Light on purpose (no torch import): ``bt.hub.list_models()`` and the restricted unpickler read
it through ``biomed_toolkit.FAMILY_REGISTRIES``.
"""

from __future__ import annotations

from biomed_toolkit.core.hub import ModelSpec

_FILES = ("config.json", "model.safetensors", "tokenizer/config.yaml", "tokenizer/*.json")

#: What has been checked against the official code for these checkpoints (the ``verified`` column).
_VERIFIED = ("not verified: no official fixture of this checkpoint (the architecture, heads and "
             "tokenizer match the official code on mammal_official_tiny: ids exact, encoder, "
             "scalar head, teacher-forced logits and generation equal; tests/mammal/test_model.py)")

MODELS: list[ModelSpec] = [
    ModelSpec("mammal-base", "mammal", "base (prompted)", "hub",
              hub_id="ibm/biomed.omics.bl.sm.ma-ted-458m", parameters=458_000_000,
              description="MAMMAL T5 encoder-decoder, pretrained",
              files=_FILES, verified=_VERIFIED),
    ModelSpec("mammal-dti-bindingdb-pkd", "mammal", "dti", "hub",
              hub_id="ibm/biomed.omics.bl.sm.ma-ted-458m.dti_bindingdb_pkd", parameters=458_000_000,
              description="MAMMAL fine-tuned: drug-target pKd (BindingDB)",
              files=_FILES, verified=_VERIFIED),
    ModelSpec("mammal-bbbp", "mammal", "bbbp", "hub",
              hub_id="ibm/biomed.omics.bl.sm.ma-ted-458m.moleculenet_bbbp", parameters=458_000_000,
              description="MAMMAL fine-tuned: blood-brain barrier permeability",
              files=_FILES, verified=_VERIFIED),
    ModelSpec("mammal-clintox-tox", "mammal", "clintox", "hub",
              hub_id="ibm/biomed.omics.bl.sm.ma-ted-458m.moleculenet_clintox_tox", parameters=458_000_000,
              description="MAMMAL fine-tuned: ClinTox clinical toxicity",
              files=_FILES, verified=_VERIFIED),
    ModelSpec("mammal-tcr-epitope", "mammal", "tcr", "hub",
              hub_id="ibm-research/biomed.omics.bl.sm.ma-ted-458m.tcr_epitope_bind", parameters=458_000_000,
              description="MAMMAL fine-tuned: TCR-epitope binding",
              files=_FILES, verified=_VERIFIED),
    ModelSpec("mammal-protein-solubility", "mammal", "protein solubility", "hub",
              hub_id="ibm/biomed.omics.bl.sm.ma-ted-458m.protein_solubility", parameters=458_000_000,
              description="MAMMAL fine-tuned: protein solubility",
              files=_FILES, verified=_VERIFIED),
]

#: Config classes the official MAMMAL code (and transformers) pickles into its checkpoints.
PICKLE_CLASSES: list[str] = [
    "mammal.model.MammalConfig",
    "transformers.models.t5.configuration_t5.T5Config",
]

LEGACY_RENAMES: dict[str, dict[str, str]] = {}
