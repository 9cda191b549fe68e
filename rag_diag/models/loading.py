"""Loading encoders: registered names, local sentence-transformers / transformers folders, hub ids.

:class:`TransformerEncoder` wraps a Hugging Face model and tokenizer behind the
:class:`rag_diag.models.protocol.Encoder` Protocol (tokenize, hidden states). Loaded encoders are
memoised per (model, device, window).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag.devices import resolve_device
from rag_diag.errors import RagDiagError, first_line
from rag_diag.models.protocol import Tokenized
from rag_diag.models.registry import (
    DEFAULT_MODEL,
    REGISTRY,
    gemma_path,
    hash_files,
    minilm_path,
    mpnet_path,
    weight_files,
)

TEXTS_PER_CALL = 64
"""Texts per tokenizer call. In one call, 1,200 long texts of the 100k knowledge base (2.7·10⁶ uncut tokens)
raised RSS by 0.56 GiB, which the allocator kept once they were freed; the window-cut call holds the cut tails too."""


@dataclass
class TransformerEncoder:
    """A Hugging Face transformer ready for token extraction (implements the ``Encoder`` Protocol).

    ``identity`` records everything that changes the output (name, source, weights hash) and keys
    the token-store cache.
    """

    name: str
    kind: str
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    max_seq_length: int
    dim: int
    identity: dict[str, Any] = field(default_factory=dict)
    num_layers: int = 0

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids and special-token masks per text (cut to the window), each text's uncut token count, and how
        many were cut; TEXTS_PER_CALL texts per tokenizer call, so only one chunk's uncut ids are ever held."""
        input_ids: list[list[int]] = []
        special: list[list[int]] = []
        lengths: list[int] = []
        for start in range(0, len(texts), TEXTS_PER_CALL):
            part = list(texts[start : start + TEXTS_PER_CALL])
            uncut = self.tokenizer(part, add_special_tokens=True, truncation=False, verbose=False,
                                   return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            lengths += [len(ids) for ids in uncut]
            del uncut
            cut = self.tokenizer(part, add_special_tokens=True, truncation=True, max_length=self.max_seq_length,
                                 return_special_tokens_mask=True, return_attention_mask=False,
                                 return_token_type_ids=False, verbose=False)
            input_ids += cut["input_ids"]
            special += cut["special_tokens_mask"]
        n_truncated = sum(1 for n in lengths if n > self.max_seq_length)
        return Tokenized(input_ids, special, n_truncated, lengths)

    def hidden_states(self, batch: Sequence[Sequence[int]], layers: Sequence[int]) -> np.ndarray:
        """(L, B, W, d) float32 hidden states of right-padded rows; padding masked out of attention."""
        import torch

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(row) for row in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for position, row in enumerate(batch):
            ids[position, : len(row)] = torch.as_tensor(list(row))
            mask[position, : len(row)] = 1
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if "token_type_ids" in self.tokenizer.model_input_names:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        want_hidden = list(layers) != [self.num_layers]
        with torch.inference_mode():
            output = self.model(**inputs, output_hidden_states=want_hidden)
        if want_hidden:
            stacked = torch.stack([output.hidden_states[layer] for layer in layers])
        else:
            stacked = output.last_hidden_state.unsqueeze(0)
        return stacked.float().cpu().numpy()


def _load_sentence_transformer(path: str, name: str, kind: str, device: str) -> TransformerEncoder:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device=device)
    transformer: Any = st[0]
    model: Any = transformer.auto_model
    tokenizer: Any = transformer.tokenizer
    tokenizer.padding_side = "right"
    folder = Path(path)
    weights = hash_files(weight_files(folder)) if folder.is_dir() else f"hub:{path}"
    return TransformerEncoder(
        name=name,
        kind=kind,
        model=model.eval(),
        tokenizer=tokenizer,
        max_seq_length=int(st.max_seq_length or 512),
        dim=int(model.config.hidden_size),
        identity={"name": name, "source": str(path), "weights_sha256": weights},
        num_layers=int(model.config.num_hidden_layers),
    )


def _load_transformers(path: str, name: str, kind: str, device: str, max_seq_length: int | None) -> TransformerEncoder:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"  # left padding would leak pad rows into the token matrix
    model = AutoModel.from_pretrained(path, dtype="float32").to(device).eval()
    config = model.config
    limit = max_seq_length or min(
        int(getattr(config, "max_position_embeddings", 512) or 512),
        int(tokenizer.model_max_length if tokenizer.model_max_length < 1e6 else 512),
        512,
    )
    folder = Path(path)
    weights = hash_files(weight_files(folder)) if folder.is_dir() else f"hub:{path}"
    return TransformerEncoder(
        name=name,
        kind=kind,
        model=model,
        tokenizer=tokenizer,
        max_seq_length=limit,
        dim=int(config.hidden_size),
        identity={"name": name, "source": str(path), "weights_sha256": weights},
        num_layers=int(config.num_hidden_layers),
    )


def _load_random_minilm(device: str, seed: int = 0) -> TransformerEncoder:
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = minilm_path()
    config = AutoConfig.from_pretrained(str(path))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).to(device).eval()
    torch.random.set_rng_state(generator_state)
    digest = hashlib.sha256()
    for tensor_name, tensor in sorted(model.state_dict().items()):
        digest.update(tensor_name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "right"
    return TransformerEncoder(
        name="random-minilm",
        kind="control",
        model=model,
        tokenizer=tokenizer,
        max_seq_length=256,
        dim=int(config.hidden_size),
        identity={"name": "random-minilm", "source": f"random init, seed {seed}", "weights_sha256": digest.hexdigest()},
        num_layers=int(config.num_hidden_layers),
    )


_LOADED: dict[tuple[str, str, int | None], TransformerEncoder] = {}


def load_encoder(
    model: str = DEFAULT_MODEL, device: str = "cpu", max_seq_length: int | None = None
) -> TransformerEncoder:
    """Load a registered model by name, or any local sentence-transformers / transformers folder.

    A hub id is accepted only when ``RAG_DIAG_ONLINE=1`` (otherwise the offline default would fail
    after long retries). Loaded encoders are memoised per (model, device, max_seq_length).
    """
    device = resolve_device(device)
    key = (model, device, max_seq_length)
    if key in _LOADED:
        return _LOADED[key]
    if model == "minilm":
        encoder = _load_sentence_transformer(str(minilm_path()), "minilm", "contrastive", device)
    elif model == "mpnet":
        encoder = _load_sentence_transformer(str(mpnet_path()), "mpnet", "contrastive", device)
    elif model == "gemma-270m":
        encoder = _load_transformers(str(gemma_path()), "gemma-270m", "backbone", device, max_seq_length or 512)
    elif model == "random-minilm":
        encoder = _load_random_minilm(device)
    else:
        encoder = _load_user_model(model, device, max_seq_length)
    if max_seq_length is not None:
        limit = _position_limit(encoder)
        if not 1 <= max_seq_length <= limit:
            raise RagDiagError(f"--max-seq-length {max_seq_length} is outside 1..{limit}, the positions of "
                               f"model '{encoder.name}'")
        encoder.max_seq_length = max_seq_length
    encoder.identity["max_seq_length"] = encoder.max_seq_length
    _LOADED[key] = encoder
    return encoder


def _position_limit(encoder: TransformerEncoder) -> int:
    """The longest input the model takes: the tokenizer's limit when it states one, else the position table."""
    stated = int(getattr(encoder.tokenizer, "model_max_length", 0) or 0)
    positions = int(getattr(encoder.model.config, "max_position_embeddings", 0) or 0)
    return stated if 0 < stated < 1_000_000 else positions or 512


def _load_user_model(model: str, device: str, max_seq_length: int | None) -> TransformerEncoder:
    try:
        return _load_user_model_unchecked(model, device, max_seq_length)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # broken folders fail in many ways
        raise RagDiagError(f"{model}: cannot load the model ({first_line(exc)})") from None


def _load_user_model_unchecked(model: str, device: str, max_seq_length: int | None) -> TransformerEncoder:
    folder = Path(model).expanduser()
    if folder.is_dir():
        if (folder / "modules.json").is_file():
            return _load_sentence_transformer(str(folder), str(folder), "user", device)
        if (folder / "config.json").is_file():
            return _load_transformers(str(folder), str(folder), "user", device, max_seq_length)
        raise RagDiagError(f"{folder}: not a sentence-transformers or transformers model folder (no config.json)")
    if os.environ.get("RAG_DIAG_ONLINE") != "1":
        known = ", ".join(REGISTRY)
        raise RagDiagError(
            f"unknown model '{model}': not a registered name ({known}) nor a local folder; "
            "for a hub id set RAG_DIAG_ONLINE=1"
        )
    return _load_sentence_transformer(model, model, "user", device)


