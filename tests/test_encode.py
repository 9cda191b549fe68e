"""Token extraction and the token store, checked against transformers and sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rag_diag.encode import TokenStore, encode_texts, encode_with_report
from rag_diag.errors import RagDiagError


def test_token_rows_equal_transformers_last_hidden_state(minilm, tiny_texts, tiny_store):
    """Independent forward pass with a padded batch: non-padding rows must match the store."""
    from transformers import AutoModel, AutoTokenizer

    from rag_diag.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = AutoModel.from_pretrained(str(minilm_path())).eval()
    batch = tokenizer(tiny_texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state.numpy()
    for i in range(len(tiny_texts)):
        n = int(batch["attention_mask"][i].sum())
        assert tiny_store.lengths[i] == n
        np.testing.assert_allclose(tiny_store.tokens(i), hidden[i, :n], atol=1e-5)
        np.testing.assert_array_equal(tiny_store.token_ids[tiny_store.offsets[i] : tiny_store.offsets[i + 1]],
                                      batch["input_ids"][i, :n].numpy())


def test_store_mean_equals_sentence_transformers_encode(tiny_texts, tiny_store):
    """Mean of stored tokens == sentence-transformers mean pooling (its Normalize module removed)."""
    from sentence_transformers import SentenceTransformer

    from rag_diag.models import minilm_path

    full = SentenceTransformer(str(minilm_path()), device="cpu")
    unnormalised = SentenceTransformer(modules=[full[0], full[1]], device="cpu")
    reference = unnormalised.encode(tiny_texts, normalize_embeddings=False, batch_size=3)
    np.testing.assert_allclose(tiny_store.means(), reference, atol=1e-5)


def test_special_mask_flags_cls_and_sep(tiny_store, minilm):
    tokenizer = minilm.tokenizer
    for i in range(len(tiny_store)):
        start, stop = tiny_store.offsets[i], tiny_store.offsets[i + 1]
        ids = tiny_store.token_ids[start:stop]
        mask = tiny_store.special_mask[start:stop]
        assert ids[0] == tokenizer.cls_token_id and mask[0]
        assert ids[-1] == tokenizer.sep_token_id and mask[-1]
        assert not mask[1:-1].any()


def _count_forward_passes(encoder):
    calls = {"n": 0}

    def hook(module, args, kwargs, output):
        calls["n"] += 1

    handle = encoder.model.register_forward_hook(hook, with_kwargs=True)
    return calls, handle


def test_cache_hit_runs_zero_forward_passes(minilm, tiny_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path / "cache"))
    calls, handle = _count_forward_passes(minilm)
    try:
        first, report = encode_with_report(tiny_texts, model=minilm, batch_size=4)
        assert calls["n"] == 2 and report.forward_passes == 2 and not report.cache_hit
        second, report = encode_with_report(tiny_texts, model=minilm, batch_size=4)
        assert calls["n"] == 2 and report.cache_hit and report.forward_passes == 0
        # Another text set is another cache entry: the encoder runs again.
        encode_with_report(tiny_texts[:-1], model=minilm, batch_size=4)
        assert calls["n"] == 4
    finally:
        handle.remove()
    np.testing.assert_array_equal(np.asarray(first.embeddings), np.asarray(second.embeddings))


def test_truncated_cache_file_is_rebuilt(minilm, tiny_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path / "cache"))
    store = encode_texts(tiny_texts, model=minilm)
    expected = np.array(store.embeddings)
    target = store.path / "embeddings.npy"
    del store
    size = target.stat().st_size
    with open(target, "r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(RagDiagError, match="corrupt"):
        TokenStore.open(target.parent)
    calls, handle = _count_forward_passes(minilm)
    try:
        rebuilt, report = encode_with_report(tiny_texts, model=minilm)
    finally:
        handle.remove()
    assert not report.cache_hit and calls["n"] >= 1
    np.testing.assert_array_equal(np.asarray(rebuilt.embeddings), expected)


def test_flipped_byte_is_detected(minilm, tiny_texts, tmp_path):
    store = encode_texts(tiny_texts[:2], model=minilm, out=tmp_path / "s", cache=False)
    target = store.path / "embeddings.npy"
    del store
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(RagDiagError, match="checksum"):
        TokenStore.open(target.parent)


def test_truncation_is_counted(minilm, tmp_path):
    long_text = "free software " * 400
    store, report = encode_with_report(
        ["short text", long_text], model=minilm, out=tmp_path / "s", cache=False
    )
    assert report.n_truncated == 1
    assert store.lengths[1] == minilm.max_seq_length == 256


def test_float16_storage_is_close_to_float32(minilm, tiny_texts, tiny_store, tmp_path):
    half = encode_texts(tiny_texts, model=minilm, dtype="float16", out=tmp_path / "h", cache=False)
    assert half.embeddings.dtype == np.float16
    np.testing.assert_allclose(half.means(), tiny_store.means(), atol=2e-3)


def test_all_layers_are_stored_and_last_equals_default(minilm, tiny_texts, tiny_store, tmp_path):
    store = encode_texts(tiny_texts[:3], model=minilm, layers="all", out=tmp_path / "a", cache=False)
    assert store.layers == list(range(minilm.num_layers + 1))
    for i in range(3):
        np.testing.assert_allclose(store.tokens(i, layer=minilm.num_layers), tiny_store.tokens(i), atol=1e-5)
    # Layer 0 is the embedding output: it differs from the last layer.
    assert not np.allclose(store.tokens(0, layer=0), store.tokens(0))


@pytest.mark.parametrize(
    ("texts", "message"),
    [([], "empty"), (["ok", "   "], "empty"), (["a", "b"], None)],
)
def test_bad_texts_are_refused(minilm, tmp_path, texts, message):
    if message is None:
        with pytest.raises(RagDiagError, match="duplicate"):
            encode_texts(texts, model=minilm, ids=["x", "x"], out=tmp_path / "s", cache=False)
        return
    with pytest.raises(RagDiagError, match=message):
        encode_texts(texts, model=minilm, out=tmp_path / "s", cache=False)
    assert not (tmp_path / "s").exists()


def test_cli_encode_writes_store_and_reports_cache(tmp_path, tiny_texts, capsys):
    from rag_diag.cli import main

    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(tiny_texts) + "\n")
    assert main(["encode", "--corpus", str(corpus), "--out", str(tmp_path / "store")]) == 0
    store = TokenStore.open(tmp_path / "store")
    assert store.doc_ids == [str(i) for i in range(len(tiny_texts))]
    assert main(["encode", "--corpus", str(corpus), "--out", str(tmp_path / "store2")]) == 0
    assert "cache hit" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"first line\n\nthird\n", "2: empty line"),
        (b"good\n\xff\xfe bad bytes\n", "2: not valid UTF-8"),
    ],
)
def test_cli_encode_bad_input_one_line_error(tmp_path, capsys, content, message):
    from rag_diag.cli import main

    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    code = main(["encode", "--corpus", str(corpus), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
