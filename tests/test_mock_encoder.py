"""The deterministic mock encoder: it satisfies the Encoder Protocol, and a token store built with it
holds exactly its hidden states minus padding (no torch, milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest

from rag_diag.models.mock import CLS_ID, SEP_ID, MockEncoder
from rag_diag.models.protocol import Encoder, Tokenized
from rag_diag.tokens.extract import encode_texts


def test_mock_satisfies_the_encoder_protocol():
    encoder = MockEncoder()
    assert isinstance(encoder, Encoder)
    assert (encoder.dim, encoder.num_layers, encoder.max_seq_length) == (16, 2, 32)
    assert encoder.device == "cpu" and encoder.name == "mock" and encoder.kind == "mock"
    assert encoder.identity["name"] == "mock" and encoder.identity["dim"] == 16
    for name in ("name", "kind", "dim", "num_layers", "max_seq_length", "identity", "device"):
        assert hasattr(encoder, name)


def test_tokenize_adds_special_tokens_and_flags_them():
    tokenized = MockEncoder().tokenize(["Hello, world!", "one"])
    assert isinstance(tokenized, Tokenized) and tokenized.n_truncated == 0
    assert [len(row) for row in tokenized.input_ids] == [4, 3] and tokenized.full_lengths == [4, 3]
    for ids, mask in zip(tokenized.input_ids, tokenized.special_mask, strict=True):
        assert ids[0] == CLS_ID and ids[-1] == SEP_ID
        assert mask == [1] + [0] * (len(ids) - 2) + [1]
    # lower-cased word pieces: case and punctuation do not change the ids
    assert MockEncoder().tokenize(["HELLO world"]).input_ids == MockEncoder().tokenize(["hello, world"]).input_ids


def test_hidden_states_shape_padding_and_layers():
    encoder = MockEncoder()
    rows = encoder.tokenize(["a b c d e", "f"]).input_ids
    states = encoder.hidden_states(rows, [0, 2])
    assert states.shape == (2, 2, 7, 16) and states.dtype == np.float32
    assert np.all(states[:, 1, 3:] == 0.0)  # right padding is zeros
    assert not np.array_equal(states[0], states[1])  # layers differ (0.1·layer·position vector)
    # a token's row does not depend on the rest of the batch (right padding, no attention)
    alone = encoder.hidden_states(rows[1:], [0, 2])
    np.testing.assert_array_equal(alone[:, 0], states[:, 1, : len(rows[1])])


def test_store_rows_equal_hidden_states_minus_padding(tiny_texts, tmp_path):
    encoder = MockEncoder()
    store = encode_texts(tiny_texts, model=encoder, layers="all", out=tmp_path / "s", cache=False, batch_size=3)
    tokenized = encoder.tokenize(tiny_texts)
    padded = encoder.hidden_states(tokenized.input_ids, store.layers)  # one batch of all texts
    assert store.layers == [0, 1, 2] and store.dim == encoder.dim
    for i, ids in enumerate(tokenized.input_ids):
        n = len(ids)
        assert store.lengths[i] == n
        np.testing.assert_array_equal(store.token_ids[store.offsets[i] : store.offsets[i + 1]], ids)
        for position, layer in enumerate(store.layers):
            # float32 in, float32 stored: identical bits
            np.testing.assert_array_equal(store.tokens(i, layer=layer), padded[position, i, :n])


def test_encoding_is_deterministic(tiny_texts, tmp_path):
    a = encode_texts(tiny_texts, model=MockEncoder(), out=tmp_path / "a", cache=False, batch_size=2)
    b = encode_texts(tiny_texts[::-1], model=MockEncoder(), out=tmp_path / "b", cache=False, batch_size=5)
    for i in range(len(tiny_texts)):
        np.testing.assert_array_equal(a.tokens(i), b.tokens(len(tiny_texts) - 1 - i))
    again = encode_texts(tiny_texts, model=MockEncoder(), out=tmp_path / "c", cache=False, batch_size=2)
    np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(again.embeddings))
    assert a.manifest["key"] == again.manifest["key"]


def test_equal_words_give_equal_token_rows(tmp_path):
    store = encode_texts(["alpha beta", "beta alpha"], model=MockEncoder(), layers=0, out=tmp_path / "s", cache=False)
    # at layer 0 the position term vanishes: a word's row is its id's vector wherever it stands
    np.testing.assert_array_equal(store.tokens(0, layer=0)[1], store.tokens(1, layer=0)[2])


@pytest.mark.parametrize(("window", "n_truncated"), [(32, 0), (6, 2), (2, 3)])
def test_truncation_count(tmp_path, window, n_truncated):
    texts = ["one", "one two three four five", "a b c d e f g h i j"]  # 3, 7 and 12 tokens
    encoder = MockEncoder(max_seq_length=window)
    tokenized = encoder.tokenize(texts)
    assert tokenized.full_lengths == [3, 7, 12] and tokenized.n_truncated == n_truncated
    store = encode_texts(texts, model=encoder, out=tmp_path / "s", cache=False)
    assert store.report.n_truncated == n_truncated
    assert store.lengths.tolist() == [min(n, window) for n in (3, 7, 12)]
    for i in range(len(texts)):
        assert store.token_ids[store.offsets[i + 1] - 1] == SEP_ID  # the closing [SEP] survives the cut
