"""``MammalModel``: transformers T5 + encoder head + scalar head + input-scalar projection.

Loads the official ``config.json`` + ``model.safetensors`` (the shared embedding stored under any
of its three names), official Lightning ``.ckpt`` files (through the restricted unpickler only)
and our own ``save_pretrained`` folders.

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load()  # doctest: +SKIP
>>> out = model.encoder_only(model.encode(bt.mammal.prompts.dti("MKT...", "CCO")))  # doctest: +SKIP
>>> out.scalars[:, 0]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biomed_toolkit.core.errors import CheckpointError, PromptError
from biomed_toolkit.core.log import get_logger

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


class MammalModel(nn.Module):
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

    def __init__(self, config: MammalConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        from transformers import T5ForConditionalGeneration

        self.config = config
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
        self.card: Any = None

    # ------------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

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

    def forward(self, batch: Batch, decoder_input_ids: torch.Tensor | None = None) -> Any:
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

    # ------------------------------------------------------------------ persistence

    def merge_lora(self) -> MammalModel:
        """Fold LoRA adapters (from ``finetune(..., lora=True)``) into the base weights, in place.

        Examples
        --------
        >>> model.merge_lora().save_pretrained("merged")  # doctest: +SKIP
        """
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent_name) if parent_name else self, child, module.get_base_layer())
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` (shared table stored once) and ``tokenizer/``.

        Examples
        --------
        >>> model.save_pretrained("my_mammal")  # doctest: +SKIP
        """
        from biomed_toolkit.core.weights import save_safetensors

        if any("lora_" in k for k in self.state_dict()):
            raise CheckpointError("the model carries LoRA adapters: call model.merge_lora() before save_pretrained")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(folder / "config.json")
        state = {k: v for k, v in self.state_dict().items()}
        save_safetensors(state, folder / "model.safetensors")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder / "tokenizer")
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *, device: Any = "auto") -> MammalModel:
        """Same as :func:`load`."""
        return load(name_or_path, device=device)

    def load_weights(self, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
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


# ---------------------------------------------------------------------------- loading


def _infer_config(sd: dict[str, torch.Tensor]) -> MammalConfig:
    """Rebuild the architecture from tensor shapes (a ckpt without a usable config)."""
    table = next(sd[n] for n in _SHARED_NAMES if n in sd)
    vocab, d = table.shape
    bias = sd["t5_model.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = bias.shape[1]
    inner = sd["t5_model.encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    d_ff = sd["t5_model.encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    n_enc = len({k.split(".")[3] for k in sd if k.startswith("t5_model.encoder.block.")})
    n_dec = len({k.split(".")[3] for k in sd if k.startswith("t5_model.decoder.block.")})
    lin = sorted(
        (int(k.split(".")[2]), v.shape[0]) for k, v in sd.items() if k.startswith("encoder_head.classifier.") and k.endswith(".weight")
    )
    layers = [n for _, n in lin[:-1]]
    # Slot gaps of 3 mean Dropout modules were present.
    dropout = 0.2 if len(lin) > 1 and lin[1][0] - lin[0][0] == 3 else 0.0
    sp_lin = [v.shape[0] for k, v in sorted(sd.items()) if k.startswith("scalars_prediction_head.") and k.endswith(".weight")]
    return MammalConfig.from_dict(
        {
            "t5_config": {
                "vocab_size": int(vocab),
                "d_model": int(d),
                "d_kv": int(inner // heads),
                "num_heads": int(heads),
                "d_ff": int(d_ff),
                "num_layers": n_enc,
                "num_decoder_layers": n_dec,
                "relative_attention_num_buckets": int(bias.shape[0]),
            },
            "encoder_head_layers": layers,
            "encoder_head_dropout": dropout,
            "scalars_prediction_head": {"layers": sp_lin[:-1], "dropout": 0.0, "num_classes": sp_lin[-1]}
            if sp_lin
            else None,
            "support_input_scalars": "project_input_scalars.weight" in sd,
        }
    )


def _find_config_in(obj: Any, depth: int = 0) -> dict[str, Any] | None:
    """A dict with a ``t5_config`` key anywhere in pickled hyper-parameters."""
    if depth > 4:
        return None
    if hasattr(obj, "to_dict") and not isinstance(obj, dict):
        try:
            obj = obj.to_dict()
        except Exception:  # noqa: BLE001 - not a config holder
            return None
    if isinstance(obj, dict):
        if "t5_config" in obj:
            return obj
        for v in obj.values():
            found = _find_config_in(v, depth + 1)
            if found is not None:
                return found
    return None


def _load_ckpt(path: Path) -> tuple[MammalConfig, dict[str, torch.Tensor]]:
    from biomed_toolkit.core.safe_pickle import load_checkpoint

    ckpt = load_checkpoint(path)
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path} holds no state_dict")
    for prefix in ("_model.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            break
    if not any(n in sd for n in _SHARED_NAMES):
        raise CheckpointError(
            f"{path} is not a MAMMAL checkpoint: no t5_model.* embedding among its keys "
            f"(first keys: {list(sd)[:5]})"
        )
    cfg_dict = _find_config_in(ckpt.get("hyper_parameters", {}))
    if cfg_dict is None and (path.parent / "config.json").is_file():
        return MammalConfig.from_json_file(path.parent / "config.json"), sd
    if cfg_dict is not None:
        t5 = cfg_dict.get("t5_config")
        if hasattr(t5, "to_dict"):
            cfg_dict = {**cfg_dict, "t5_config": t5.to_dict()}
        return MammalConfig.from_dict(cfg_dict), sd
    log.info(f"{path.name}: no config stored; architecture inferred from tensor shapes")
    return _infer_config(sd), sd


def load(name_or_path: str | os.PathLike | None = None, *, device: Any = "auto") -> MammalModel:
    """Load a MAMMAL model (in eval mode) with its tokenizer and model card.

    Parameters
    ----------
    name_or_path
        ``None`` for the embedded demo model; a registry name or hub id (see
        ``bt.hub.list_models("mammal")``); a folder with ``config.json`` + ``model.safetensors``
        (official or ours) and ``tokenizer/``; or a Lightning ``.ckpt`` file (read through the
        restricted unpickler; weights prefixed ``_model.``).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a ``torch.device``.

    Returns
    -------
    MammalModel
        With ``.tokenizer`` (if the folder has one) and ``.card``.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> model = bt.mammal.load()  # doctest: +SKIP
    >>> model.card.name  # doctest: +SKIP
    'mammal-demo'
    """
    from biomed_toolkit.core import hub
    from biomed_toolkit.core.device import resolve_device
    from biomed_toolkit.core.weights import read_safetensors

    if name_or_path is None:
        spec = hub.default_model("mammal")
        resolved = hub.resolve(spec.name, family="mammal")
    else:
        resolved = hub.resolve(name_or_path, family="mammal")
    path = Path(resolved.path)
    ckpt_file = None
    if path.is_file():
        if path.suffix in (".ckpt", ".pt"):
            ckpt_file = path
        elif path.suffix == ".safetensors":
            path = path.parent
        else:
            raise CheckpointError(f"{path}: expected a folder, a .safetensors or a .ckpt file")
    elif not (path / "model.safetensors").is_file():
        ckpts = sorted(path.glob("*.ckpt"))
        if not ckpts:
            have = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
            raise CheckpointError(
                f"{path} has no model.safetensors and no .ckpt (found {have}); a MAMMAL folder "
                "needs config.json + model.safetensors + tokenizer/"
            )
        ckpt_file = ckpts[0]
    if ckpt_file is not None:
        config, sd = _load_ckpt(ckpt_file)
        folder = ckpt_file.parent
        weights = ckpt_file
    else:
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has model.safetensors but no config.json")
        config = MammalConfig.from_json_file(path / "config.json")
        sd, _ = read_safetensors(path / "model.safetensors")
        folder = path
        weights = path / "model.safetensors"
    tokenizer = None
    for cand in (folder / "tokenizer", folder):
        if (cand / "config.yaml").is_file():
            tokenizer = Tokenizer.from_pretrained(cand)
            break
    if tokenizer is None:
        log.warning(f"no tokenizer/ folder next to {weights}; model.tokenizer is None")
    model = MammalModel(config, tokenizer)
    model.load_weights(sd, source=str(weights))
    model.eval()
    model.to(resolve_device(device))
    name = resolved.spec.name if resolved.spec is not None else str(path)
    model.card = hub.make_card(
        name,
        "mammal",
        resolved.source,
        weights,
        config=config.to_dict(),
        task=resolved.spec.task if resolved.spec is not None else config.extra.get("task"),
    )
    return model


__all__ = ["DecoderOutput", "EncoderOutput", "GenerationResult", "MammalModel", "load"]
