"""Official BMFM-RNA checkpoints and the pickled class paths their Lightning files may hold.

Light on purpose (no torch import): ``bt.hub.list_models()`` and the restricted unpickler read
it through ``biomed_toolkit.FAMILY_REGISTRIES``.
"""

from __future__ import annotations

from biomed_toolkit.core.hub import ModelSpec

MODELS: list[ModelSpec] = [
    ModelSpec("bmfm-rna-v1-wced-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.bert.110m.wced.multitask.v1", parameters=110_000_000,
              description="BMFM-RNA v1 BERT, WCED + multitask", files=("*.ckpt", "tokenizers/<field>/")),
    ModelSpec("bmfm-rna-v1-mlm-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.bert.110m.mlm.multitask.v1", parameters=110_000_000,
              description="BMFM-RNA v1 BERT, MLM + multitask", files=("*.ckpt", "tokenizers/<field>/")),
    ModelSpec("bmfm-rna-v1-mlm-rda", "bmfm-rna", "embedding (read-depth aware)", "hub",
              hub_id="ibm-research/biomed.rna.bert.110m.mlm.rda.v1", parameters=110_000_000,
              description="BMFM-RNA v1 BERT, MLM, read-depth aware", files=("*.ckpt", "tokenizers/<field>/")),
    ModelSpec("bmfm-rna-v2-wced-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.llama.47m.wced.multitask.v1.vllm", parameters=47_000_000,
              description="BMFM-RNA v2 LLaMA-style, WCED + multitask",
              files=("config.json", "model.safetensors", "tokenizers/<field>/")),
    ModelSpec("bmfm-rna-v2-mlm-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.llama.32m.mlm.multitask.v1.vllm", parameters=32_000_000,
              description="BMFM-RNA v2 LLaMA-style, MLM + multitask",
              files=("config.json", "model.safetensors", "tokenizers/<field>/")),
]

#: Config classes the official BMFM-RNA code (``bmfm_targets``) pickles into its checkpoints.
PICKLE_CLASSES: list[str] = [
    "bmfm_targets.config.model_config.SCBertConfig",
    "bmfm_targets.config.model_config.SCNystromformerConfig",
    "bmfm_targets.config.model_config.SCPerformerConfig",
    "bmfm_targets.config.model_config.SCModernBertConfig",
    "bmfm_targets.config.model_config.SCLlamaConfig",
    "bmfm_targets.config.tokenization_config.FieldInfo",
    "bmfm_targets.config.tokenization_config.LabelColumnInfo",
    "bmfm_targets.config.training_config.TrainerConfig",
    # v2 (LLaMA-style) checkpoints
    "bmfm_targets.models.predictive.llama.config.LlamaForMultiTaskConfig",
]

#: str Enums pickled beside them as a call with their value (v2: ``AttentionKind("flex")``).
PICKLE_ENUMS: list[str] = ["bmfm_targets.models.common.llama.constants.AttentionKind"]

#: Attribute renames the official classes apply to state written by their older versions.
LEGACY_RENAMES: dict[str, dict[str, str]] = {
    "FieldInfo": {
        "masked_output_modes": "decode_modes",
        "continuous_value_encoder_kwargs": "encoder_kwargs",
    },
    "LabelColumnInfo": {"output_size": "n_unique_values"},
}
