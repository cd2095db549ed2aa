"""Official BMFM-RNA checkpoints and the pickled class paths their Lightning files may hold.

Light on purpose (no torch import): ``bt.hub.list_models()`` and the restricted unpickler read
it through ``biomed_toolkit.FAMILY_REGISTRIES``.
"""

from __future__ import annotations

from biomed_toolkit.core.hub import ModelSpec

_V1_FIXTURE = (
    "bmfm_rna_official_tiny (official bmfm-targets 0.20.0 .ckpt of this template, tiny random "
    "weights): inputs exact; CLS state, pooler, hidden states, label logits, WCED, inference "
    "embedding and predicted labels within 1e-5 (tests/rna/test_fixture_parity.py)")
_V2_FIXTURE = (
    "bmfm_rna_v2_official_tiny (official .ckpt of this template and its vllm conversion, tiny "
    "random weights, L=1024 and 2048): inputs bit-exact; all 5 CLS states, pooler, 5 label heads, "
    "WCED, tl.embed and annotate class names within 1e-5 (tests/rna/test_fixture_parity_v2.py)")
_NOT_VERIFIED = "not verified: no official fixture of this checkpoint"

MODELS: list[ModelSpec] = [
    ModelSpec("bmfm-rna-v1-wced-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.bert.110m.wced.multitask.v1", parameters=110_000_000,
              description="BMFM-RNA v1 BERT, WCED + multitask", files=("*.ckpt", "tokenizers/<field>/"),
              verified=_V1_FIXTURE),
    ModelSpec("bmfm-rna-v1-mlm-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.bert.110m.mlm.multitask.v1", parameters=110_000_000,
              description="BMFM-RNA v1 BERT, MLM + multitask", files=("*.ckpt", "tokenizers/<field>/"),
              verified=f"{_NOT_VERIFIED} (its encoder is the v1 WCED fixture's; MLM heads unchecked)"),
    ModelSpec("bmfm-rna-v1-mlm-rda", "bmfm-rna", "embedding (read-depth aware)", "hub",
              hub_id="ibm-research/biomed.rna.bert.110m.mlm.rda.v1", parameters=110_000_000,
              description="BMFM-RNA v1 BERT, MLM, read-depth aware", files=("*.ckpt", "tokenizers/<field>/"),
              verified="refused by load: its [S]/[T] inputs cannot be reproduced exactly (see UNREPRODUCIBLE)"),
    ModelSpec("bmfm-rna-v2-wced-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.llama.47m.wced.multitask.v1.vllm", parameters=47_000_000,
              description="BMFM-RNA v2 LLaMA-style, WCED + multitask",
              files=("config.json", "model.safetensors", "checkpoint_metadata.json", "tokenizers/<field>/"),
              verified=_V2_FIXTURE),
    ModelSpec("bmfm-rna-v2-mlm-multitask", "bmfm-rna", "embedding, cell type", "hub",
              hub_id="ibm-research/biomed.rna.llama.32m.mlm.multitask.v1.vllm", parameters=32_000_000,
              description="BMFM-RNA v2 LLaMA-style, MLM + multitask",
              files=("config.json", "model.safetensors", "checkpoint_metadata.json", "tokenizers/<field>/"),
              verified=f"{_NOT_VERIFIED} (same v2 architecture as the verified 47m WCED one; MLM heads "
                       "unchecked)"),
]

#: Registered checkpoints ``load`` refuses, by hub id, with the reason: loading them would
#: return a model that computes something else than the official code.
UNREPRODUCIBLE: dict[str, str] = {
    "ibm-research/biomed.rna.bert.110m.mlm.rda.v1": (
        "this read-depth-aware checkpoint reads two extra input tokens, [S] = log1p(input total) "
        "and [T] = log1p(target total), but what is known of the official code does not fix "
        "where they sit in the sequence, which genes the input total sums over, or how the gene "
        "values are normalised next to them, and no official output of this checkpoint is "
        "available to check a guess against. Its embeddings could not be trusted, so it is not "
        "loaded; use bmfm-rna-v1-mlm-multitask or bmfm-rna-v2-wced-multitask instead"),
}

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
