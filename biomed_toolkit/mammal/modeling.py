"""``MammalModel``: transformers T5 + encoder head + scalar head + input-scalar projection.

The network only; the lifecycle (``from_pretrained``, ``save_pretrained``, card, inference mode,
LoRA merge) comes from :class:`~biomed_toolkit.core.model.BaseModel`, and the official formats
(Lightning ``.ckpt``) are read in :mod:`biomed_toolkit.mammal.loading`.

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load()  # doctest: +SKIP
>>> out = model.encoder_only(model.encode(bt.mammal.prompts.dti("MKT...", "CCO")))  # doctest: +SKIP
>>> out.scalars[:, 0]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch
from torch import nn

from biomed_toolkit.core.errors import CheckpointError, PromptError
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.model import BaseModel

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from biomed_toolkit.core.hub import ResolvedModel

from biomed_toolkit.core.validation import check_int

from .configuration import MammalConfig
from .tokenizer import Batch, Tokenizer

log = get_logger(__name__)

_SHARED_NAMES = (
    "t5_model.shared.weight",
    "t5_model.encoder.embed_tokens.weight",
    "t5_model.decoder.embed_tokens.weight",
)


@dataclass
class EncoderOutput:
    """Encoder-only outputs (all ``[batch, length, ...]``).

    Attributes
    ----------
    last_hidden_state
        ``[B, L, d_model]`` after the encoder's final norm.
    logits
        ``[B, L, vocab]`` encoder-head logits at every position.
    scalars
        ``[B, L]`` scalar-head output at every position (``None`` without a scalar head).
    attention_mask
        ``[B, L]`` bool, True at real tokens.
    """

    last_hidden_state: torch.Tensor
    logits: torch.Tensor
    scalars: torch.Tensor | None
    attention_mask: torch.Tensor


@dataclass
class DecoderOutput:
    """Teacher-forced encoder-decoder outputs.

    Attributes
    ----------
    logits
        ``[B, T, vocab]`` next-token logits for each decoder input position.
    encoder_last_hidden_state
        ``[B, L, d_model]``.
    """

    logits: torch.Tensor
    encoder_last_hidden_state: torch.Tensor


@dataclass
class GenerationResult:
    """Decoded answers.

    Attributes
    ----------
    texts
        Decoded tokens up to and including the first ``<EOS>``.
    ids
        ``[B, T]`` generated ids (decoder start token removed, ``<PAD>`` after ``<EOS>``).
    token_probabilities
        ``[B, T]`` softmax probability of each generated token (NaN after ``<EOS>``).
    scores
        ``[B, T, vocab]`` next-token logits of every step (only with ``output_scores=True``).
    """

    texts: list[str]
    ids: torch.Tensor
    token_probabilities: torch.Tensor
    scores: torch.Tensor | None = None

    def probabilities(self, step: int) -> torch.Tensor:
        """``[B, vocab]`` softmax distribution at ``step`` (needs ``output_scores=True``)."""
        if self.scores is None:
            raise PromptError("generate(..., output_scores=True) is needed for full distributions")
        return torch.softmax(self.scores[:, step].float(), dim=-1)


class _Head(nn.Module):
    """MLP applied at every position; Dropout modules take Sequential slots like the official head."""

    def __init__(self, d_in: int, layers: Sequence[int], dropout: float, n_out: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = d_in
        for h in layers:
            mods += [nn.Linear(d, int(h)), nn.ReLU()]
            if dropout and dropout > 0:
                mods.append(nn.Dropout(float(dropout)))
            d = int(h)
        mods.append(nn.Linear(d, int(n_out)))
        self.classifier = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class MammalModel(BaseModel):
    """MAMMAL encoder-decoder with its heads.

    Parameters
    ----------
    config
        A :class:`MammalConfig`.
    tokenizer
        The matching :class:`Tokenizer` (needed for prompt strings and decoding).

    Examples
    --------
    >>> model = MammalModel(MammalConfig.from_dict({"t5_config": {"d_model": 32, "d_ff": 64,
    ...     "d_kv": 8, "num_heads": 4, "num_layers": 1, "num_decoder_layers": 1, "vocab_size": 600},
    ...     "encoder_head_layers": [16]}))
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
    """

    config_class = MammalConfig
    family = "mammal"
    config: MammalConfig

    def __init__(self, config: MammalConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__(config)
        from transformers import T5ForConditionalGeneration

        t5cfg = config.to_t5_config()
        self.t5_model = T5ForConditionalGeneration(t5cfg)
        t5 = self.t5_model
        # One embedding table for both stacks (transformers 5 only ties them when the lm_head is tied too).
        t5.encoder.embed_tokens = t5.shared
        t5.decoder.embed_tokens = t5.shared
        if not t5cfg.tie_word_embeddings and t5.lm_head.weight is t5.shared.weight:
            t5.lm_head.weight = nn.Parameter(t5.shared.weight.detach().clone())
        d = config.d_model
        self.encoder_head = _Head(d, config.encoder_head_layers, config.encoder_head_dropout, config.vocab_size)
        sp = config.scalars_prediction_head
        self.scalars_prediction_head = (
            _Head(d, sp.get("layers", []), sp.get("dropout", 0.0), sp.get("num_classes", 1)) if sp else None
        )
        self.project_input_scalars = nn.Linear(1, d) if config.support_input_scalars else None
        self.tokenizer = tokenizer
        #: Held-out metrics of the last :func:`~biomed_toolkit.mammal.training.finetune` (DataFrame).
        self.test_metrics: pd.DataFrame | None = None
        #: Split label of every row of the table that fine-tune was given.
        self.splits: np.ndarray | None = None

    # ------------------------------------------------------------------ helpers

    def encode(self, prompts: str | Sequence[str], **kwargs: Any) -> Batch:
        """Tokenize prompt(s) with the model's tokenizer (see :meth:`Tokenizer.__call__`).

        Examples
        --------
        >>> batch = model.encode(["<@TOKENIZER-TYPE=AA><MASK>MKT<EOS>"])  # doctest: +SKIP
        """
        if self.tokenizer is None:
            raise PromptError("this model has no tokenizer: pass a Batch, or set model.tokenizer")
        return self.tokenizer(prompts, **kwargs)

    def _batch(self, x: Batch | str | Sequence[str], **kwargs: Any) -> Batch:
        b = x if isinstance(x, Batch) else self.encode(x, **kwargs)  # type: ignore[arg-type]
        return b.to(self.device)

    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        """Token embeddings plus ``project_input_scalars(value)`` at valid scalar positions."""
        x = self.t5_model.shared(batch.input_ids)
        if self.project_input_scalars is not None and bool(batch.scalars_valid_mask.any()):
            w = self.project_input_scalars.weight[:, 0]
            vals = torch.where(batch.scalars_valid_mask, batch.scalars_values, torch.zeros_like(batch.scalars_values))
            add = vals.unsqueeze(-1).to(x.dtype) * w + self.project_input_scalars.bias
            x = torch.where(batch.scalars_valid_mask.unsqueeze(-1), x + add, x)
        return x

    def run_encoder(self, batch: Batch) -> torch.Tensor:
        """``[B, L, d_model]`` encoder last hidden state (after the final norm)."""
        out = self.t5_model.encoder(
            inputs_embeds=self.embed_inputs(batch), attention_mask=batch.attention_mask.long(), return_dict=True
        )
        return out.last_hidden_state

    # ------------------------------------------------------------------ public calls

    def encoder_only(self, batch: Batch | str | Sequence[str], **encode_kwargs: Any) -> EncoderOutput:
        """Encoder pass with both heads at every position.

        Examples
        --------
        >>> out = model.encoder_only(model.encode(prompt))  # doctest: +SKIP
        >>> out.scalars[:, 0]  # scalar head at <MASK>  # doctest: +SKIP
        """
        b = self._batch(batch, **encode_kwargs)
        h = self.run_encoder(b)
        logits = self.encoder_head(h)
        scal = None
        if self.scalars_prediction_head is not None:
            scal = self.scalars_prediction_head(h)
            if scal.shape[-1] == 1:
                scal = scal[..., 0]
        return EncoderOutput(h, logits, scal, b.attention_mask)

    def forward_teacher_forced(
        self,
        batch: Batch | str | Sequence[str],
        decoder_input_ids: torch.Tensor,
        *,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Encoder-decoder pass with given decoder inputs (no KV cache).

        Examples
        --------
        >>> out = model.forward_teacher_forced(batch, torch.tensor([[16, 57]]))  # doctest: +SKIP
        """
        from transformers.modeling_outputs import BaseModelOutput

        b = self._batch(batch)
        h = self.run_encoder(b)
        dec = torch.as_tensor(decoder_input_ids, device=self.device)
        if dec.dim() == 1:
            dec = dec.unsqueeze(0)
        out = self.t5_model(
            encoder_outputs=BaseModelOutput(last_hidden_state=h),
            attention_mask=b.attention_mask.long(),
            decoder_input_ids=dec,
            decoder_attention_mask=decoder_attention_mask,
            use_cache=False,
            return_dict=True,
        )
        return DecoderOutput(out.logits, h)

    def forward(self, batch: Batch, decoder_input_ids: torch.Tensor | None = None) -> EncoderOutput | DecoderOutput:
        """Encoder-only output, or teacher-forced logits when ``decoder_input_ids`` is given."""
        if decoder_input_ids is None:
            return self.encoder_only(batch)
        return self.forward_teacher_forced(batch, decoder_input_ids)

    @torch.no_grad()
    def generate(
        self,
        prompts: Batch | str | Sequence[str],
        *,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        do_sample: bool = False,
        output_scores: bool = False,
        max_seq_len: int | None = None,
        strict: bool = True,
        **generate_kwargs: Any,
    ) -> GenerationResult:
        """Decode answers starting from ``<DECODER_START>`` (greedy by default).

        Parameters
        ----------
        prompts
            Prompt string(s) or a :class:`Batch`.
        max_new_tokens, num_beams, do_sample
            Decoding; extra keywords (``temperature``, ``top_k``, ...) go to transformers' generate.
        output_scores
            Also return the per-step logits ``[B, T, vocab]``.

        Returns
        -------
        GenerationResult

        Examples
        --------
        >>> res = model.generate(prompts.ppi(a, b), max_new_tokens=3)  # doctest: +SKIP
        >>> res.texts[0]  # doctest: +SKIP
        '<SENTINEL_ID_0><1><EOS>'
        """
        from transformers.modeling_outputs import BaseModelOutput

        max_new_tokens = check_int(max_new_tokens, "max_new_tokens", where="MammalModel.generate", example=20)
        num_beams = check_int(num_beams, "num_beams", where="MammalModel.generate", example=1)
        was_training = self.training
        self.eval()
        try:
            b = self._batch(prompts, max_seq_len=max_seq_len, strict=strict)
            h = self.run_encoder(b)
            t5c = self.t5_model.config
            out = self.t5_model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=h),
                attention_mask=b.attention_mask.long(),
                max_new_tokens=int(max_new_tokens),
                num_beams=int(num_beams),
                do_sample=bool(do_sample),
                decoder_start_token_id=t5c.decoder_start_token_id,
                eos_token_id=t5c.eos_token_id,
                pad_token_id=t5c.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
                **generate_kwargs,
            )
            seq = out.sequences
            ids = seq[:, 1:]
            if num_beams == 1 and out.logits is not None:
                scores = torch.stack(list(out.logits), dim=1)
            else:
                # Beam logits are per beam, not per final sequence: recompute by teacher forcing.
                scores = self.forward_teacher_forced(b, seq[:, :-1]).logits
            scores = scores[:, : ids.shape[1]].float()
            probs = torch.softmax(scores, dim=-1).gather(-1, ids.unsqueeze(-1))[..., 0]
            eos = t5c.eos_token_id
            after = (ids == eos).long().cumsum(dim=1) - (ids == eos).long() > 0
            probs = probs.masked_fill(after, float("nan"))
            texts = []
            for row, aft in zip(ids.tolist(), after.tolist(), strict=True):
                kept = [t for t, a in zip(row, aft, strict=True) if not a]
                texts.append(self.tokenizer.decode(kept) if self.tokenizer is not None else " ".join(map(str, kept)))
            return GenerationResult(texts, ids.cpu(), probs.cpu(), scores.cpu() if output_scores else None)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ lifecycle hooks

    def lora_targets(self) -> list[str]:
        """LoRA adapts the attention ``q`` and ``v`` projections of every block."""
        return ["q", "v"]

    def _freeze_patterns(self, n_blocks: int) -> list[str]:
        """The shared embedding, the input-scalar projection and the first ``n_blocks`` encoder blocks."""
        return ["t5_model.shared.*", "project_input_scalars.*",
                *(f"t5_model.encoder.block.{i}.*" for i in range(int(n_blocks)))]

    def task_description(self) -> str | None:
        """The task recorded in ``config.extra["task"]`` (our checkpoints), else None."""
        task = (self.config.extra or {}).get("task")
        return str(task) if task is not None else None

    def _load_extras(self, folder: Path) -> None:
        """The tokenizer from ``folder/tokenizer`` (or ``folder`` itself) when there is one."""
        for cand in (folder / "tokenizer", folder):
            if (cand / "config.yaml").is_file():
                self.tokenizer = Tokenizer.from_pretrained(cand)
                return
        log.warning(f"no tokenizer/ folder in {folder}; model.tokenizer is None")

    def _save_extras(self, folder: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def _load_own(cls, folder: Path) -> Self:
        """A ``config.json`` + ``model.safetensors`` folder (official hub layout or ours).

        The MAMMAL layout has no ``model_type``; a config without ``t5_config`` belongs to another
        family and is refused before any network is built.
        """
        import json

        try:
            data = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or "t5_config" not in data:
            kind = data.get("model_type") if isinstance(data, dict) else None
            raise CheckpointError(
                f"{folder} is not a MAMMAL model: its config.json has no t5_config"
                + (f" (model_type {kind!r})" if kind else ""))
        from transformers.initialization import no_init_weights

        with no_init_weights():  # every tensor is overwritten by the strict load: skip random init
            return super()._load_own(folder)

    @classmethod
    def _load_official(cls, path: Path, resolved: ResolvedModel) -> Self:
        from .loading import load_official

        return load_official(cls, path, resolved)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
        """Copy weights in; the shared table may come under any of its three names."""
        from biomed_toolkit.core.weights import load_state_dict

        sd = dict(state_dict)
        table = next((sd[n] for n in _SHARED_NAMES if n in sd), None)
        if table is None:
            raise CheckpointError(f"the {source} has no shared embedding table (any of {list(_SHARED_NAMES)})")
        for n in _SHARED_NAMES:
            sd.setdefault(n, table)
        if "t5_model.lm_head.weight" not in sd:
            raise CheckpointError(
                f"the {source} has no t5_model.lm_head.weight; MAMMAL keeps the lm_head untied from "
                "the input embedding, so it must be stored"
            )
        load_state_dict(self, sd, strict=True, source=source)
        # Re-share in case load_state_dict replaced parameters.
        t5 = self.t5_model
        t5.encoder.embed_tokens = t5.shared
        t5.decoder.embed_tokens = t5.shared


__all__ = ["DecoderOutput", "EncoderOutput", "GenerationResult", "MammalModel"]
