"""Model registry and loading: offline loaders, identities, clear errors (real models marked slow)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rag_diag.cli import main
from rag_diag.errors import RagDiagError
from rag_diag.models.loading import load_encoder
from rag_diag.models.protocol import Encoder
from rag_diag.models.registry import REGISTRY, list_models
from rag_diag.pooling import REGISTRY as POOLINGS

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7


def forward_atol(hidden: np.ndarray, layers: int, width: int) -> float:
    """Round-off *estimate* for two float32 forward passes that differ only in batching/padding:
    ≲ √k·eps32·max|h| per layer for k-term dot products (k = the widest GEMM), summed over L layers.
    Not a rigorous bound (LayerNorm/RMSNorm can amplify)."""
    return layers * np.sqrt(width) * EPS32 * float(np.abs(hidden).max())


def test_registry_lists_the_four_models_with_kinds():
    rows = {row["name"]: row for row in list_models()}
    assert rows["minilm"]["kind"] == "contrastive" and rows["minilm"]["dim"] == 384
    assert rows["mpnet"]["dim"] == 768 and rows["gemma-270m"]["kind"] == "backbone"
    assert rows["random-minilm"]["kind"] == "control"
    assert rows["minilm"]["installed"]
    assert set(rows) == set(REGISTRY)


def test_models_command_lists_models_and_pooling_strategies(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert re.search(rf"│ {re.escape(name)} +│", out), name
    for name, strategy in POOLINGS.items():  # the row's first line: name, output dimension, index metric
        assert re.search(rf"│ {re.escape(name)} +│ {strategy.dim_formula} +│ {strategy.metric} +│", out), name


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(RagDiagError, match="unknown model 'no-such-model'") as caught:
        load_encoder("no-such-model")
    assert "\n" not in str(caught.value)


def test_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(RagDiagError, match="not a sentence-transformers or transformers model folder"):
        load_encoder(str(tmp_path))


def test_missing_package_names_the_extra(monkeypatch):
    import rag_diag.models.registry as models

    monkeypatch.setattr(models, "_has_distribution", lambda name: False)
    with pytest.raises(RagDiagError, match=r"rag-diag\[gemma\]"):
        models.gemma_path()
    assert not REGISTRY["gemma-270m"].installed()


@pytest.mark.slow
def test_transformer_encoder_satisfies_the_protocol(minilm):
    assert isinstance(minilm, Encoder)
    tokenized = minilm.tokenize(["a short text", "another one"])
    states = minilm.hidden_states(tokenized.input_ids, [minilm.num_layers])
    assert states.shape == (1, 2, max(map(len, tokenized.input_ids)), minilm.dim) and states.dtype == np.float32


@pytest.mark.slow
def test_tokenize_in_chunks_equals_one_tokenizer_call(minilm):
    from rag_diag.models.loading import TEXTS_PER_CALL

    # more texts than one chunk, some past the window: ids, masks, uncut lengths and the cut count as in one call
    texts = [f"licence clause {n} " * (1 + 37 * (n % 5)) for n in range(2 * TEXTS_PER_CALL + 5)]
    got = minilm.tokenize(texts)
    uncut = minilm.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    cut = minilm.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=minilm.max_seq_length,
                           return_special_tokens_mask=True, verbose=False)
    assert got.input_ids == cut["input_ids"] and got.special_mask == cut["special_tokens_mask"]
    assert got.full_lengths == [len(ids) for ids in uncut]
    assert 0 < got.n_truncated == sum(len(ids) > minilm.max_seq_length for ids in uncut) < len(texts)


@pytest.mark.slow
def test_random_minilm_is_seeded_and_differs_from_trained(minilm):
    from rag_diag.models.loading import _load_random_minilm

    random_model = load_encoder("random-minilm")
    assert random_model.identity["weights_sha256"] != minilm.identity["weights_sha256"]
    again = _load_random_minilm("cpu")
    assert again.identity["weights_sha256"] == random_model.identity["weights_sha256"]


@pytest.mark.slow
def test_local_folder_loads_like_the_registered_name(minilm, tiny_texts, tmp_path):
    from rag_diag.models.registry import minilm_path
    from rag_diag.tokens.extract import encode_texts

    by_path = load_encoder(str(minilm_path()))
    assert by_path.identity["weights_sha256"] == minilm.identity["weights_sha256"]
    a = encode_texts(tiny_texts[:2], model=by_path, out=tmp_path / "a", cache=False)
    b = encode_texts(tiny_texts[:2], model=minilm, out=tmp_path / "b", cache=False)
    # same weights, same tokens, same batch: the same float32 operations, so identical bits
    np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))


@pytest.mark.slow
def test_mpnet_is_assembled_and_matches_sentence_transformers(tiny_texts, tmp_path):
    from sentence_transformers import SentenceTransformer

    from rag_diag.models.registry import mpnet_path
    from rag_diag.tokens.extract import encode_texts

    encoder = load_encoder("mpnet")
    assert encoder.dim == 768
    store = encode_texts(tiny_texts[:3], model=encoder, out=tmp_path / "m", cache=False)
    full = SentenceTransformer(str(mpnet_path()), device="cpu")
    reference = SentenceTransformer(modules=[full[0], full[1]], device="cpu").encode(
        tiny_texts[:3], normalize_embeddings=False
    )
    rows = np.asarray(store.embeddings[0])
    # 12 layers, FFN width 3072; plus ST's float32 mean over ≤ n rows (≤ n·eps32·max|h|)
    atol = forward_atol(rows, 12, 3072) + int(store.lengths.max()) * EPS32 * float(np.abs(rows).max())
    np.testing.assert_allclose(store.means(), reference, rtol=0, atol=atol)


@pytest.mark.slow
def test_gemma_is_right_padded_so_batching_does_not_change_tokens(tiny_texts, tmp_path):
    """Padding on the left would shift rows; with right padding a text's tokens are batch-independent."""
    from rag_diag.tokens.extract import encode_texts

    encoder = load_encoder("gemma-270m")
    assert encoder.tokenizer.padding_side == "right" and encoder.dim == 640
    texts = [tiny_texts[7], tiny_texts[0]]  # short text batched with a longer one
    together = encode_texts(texts, model=encoder, out=tmp_path / "t", cache=False, batch_size=2)
    alone = encode_texts(texts[:1], model=encoder, out=tmp_path / "a", cache=False, batch_size=1)
    # 18 layers, MLP width 2048 (a left-padding shift would move rows by O(max|h|), far above this)
    atol = forward_atol(alone.tokens(0), 18, 2048)
    np.testing.assert_allclose(together.tokens(0), alone.tokens(0), rtol=0, atol=atol)
