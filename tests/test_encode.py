"""Token extraction and the token store: mechanics with the mock encoder (fast), and the real model
checked against transformers and sentence-transformers (slow)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rag_diag.errors import RagDiagError
from rag_diag.models.mock import CLS_ID, SEP_ID, MockEncoder
from rag_diag.tokens.cache import cache_key
from rag_diag.tokens.extract import encode_texts, parse_layers
from rag_diag.tokens.store import TokenStore

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7
HALF_UNIT = 2.0**-11  # float16 round-to-nearest: relative error ≤ 2⁻¹¹ for normal numbers
HALF_TINY = 2.0**-25  # … and absolute error ≤ 2⁻²⁵ in the subnormal range (< 2⁻¹⁴)


class CountingEncoder(MockEncoder):
    """The mock, counting its forward passes (``hidden_states`` calls)."""

    calls = 0

    def hidden_states(self, batch, layers):
        type(self).calls += 1
        return super().hidden_states(batch, layers)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def counting():
    CountingEncoder.calls = 0
    return CountingEncoder()


# ---------------------------------------------------------------------------------------------- mock: mechanics


def test_special_mask_flags_cls_and_sep(mock_store):
    for i in range(len(mock_store)):
        start, stop = mock_store.offsets[i], mock_store.offsets[i + 1]
        ids = np.asarray(mock_store.token_ids[start:stop])
        mask = mock_store.special_mask[start:stop]
        assert ids[0] == CLS_ID and mask[0]
        assert ids[-1] == SEP_ID and mask[-1]
        assert not mask[1:-1].any()
        np.testing.assert_array_equal(mock_store.tokens(i, drop_special=True), mock_store.tokens(i)[1:-1])


def test_cache_hit_runs_zero_forward_passes(tiny_texts, private_cache, counting):
    first = encode_texts(tiny_texts, model=counting, batch_size=4)
    assert counting.calls == 2 and first.report.forward_passes == 2 and not first.report.cache_hit
    assert first.path.is_relative_to(private_cache)
    second = encode_texts(tiny_texts, model=counting, batch_size=4)
    assert counting.calls == 2 and second.report.cache_hit and second.report.forward_passes == 0
    # Another text set is another cache entry: the encoder runs again.
    encode_texts(tiny_texts[:-1], model=counting, batch_size=4)
    assert counting.calls == 4
    np.testing.assert_array_equal(np.asarray(first.embeddings), np.asarray(second.embeddings))


def test_published_store_is_a_verified_copy_not_a_link(tiny_texts, tmp_path, private_cache, counting):
    published = encode_texts(tiny_texts, model=counting, out=tmp_path / "out")
    cached = encode_texts(tiny_texts, model=counting)
    assert cached.report.cache_hit and published.path == tmp_path / "out"
    for name in TokenStore.FILES:
        a, b = os.stat(published.path / name), os.stat(cached.path / name)
        assert (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) and a.st_nlink == 1
    # damage to the published copy never reaches the cache entry
    target = published.path / "embeddings.npy"
    del published
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(RagDiagError, match="checksum"):
        TokenStore.open(target.parent)
    again = encode_texts(tiny_texts, model=counting)
    assert again.report.cache_hit and counting.calls == 1


def test_truncated_cache_file_is_rebuilt(tiny_texts, private_cache, counting):
    store = encode_texts(tiny_texts, model=counting)
    expected = np.array(store.embeddings)
    target = store.path / "embeddings.npy"
    del store
    size = target.stat().st_size
    with open(target, "r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(RagDiagError, match="corrupt"):
        TokenStore.open(target.parent)
    rebuilt = encode_texts(tiny_texts, model=counting)
    assert not rebuilt.report.cache_hit and counting.calls == 2
    np.testing.assert_array_equal(np.asarray(rebuilt.embeddings), expected)


def test_flipped_byte_is_detected(tiny_texts, tmp_path):
    store = encode_texts(tiny_texts[:2], model=MockEncoder(), out=tmp_path / "s", cache=False)
    target = store.path / "embeddings.npy"
    del store
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(RagDiagError, match="checksum"):
        TokenStore.open(target.parent)
    TokenStore.open(target.parent, verify=False)  # the caller may opt out of the check


def test_truncation_is_counted(tmp_path):
    encoder = MockEncoder(max_seq_length=16)
    store = encode_texts(["short text", "free software " * 40], model=encoder, out=tmp_path / "s", cache=False)
    assert store.report.n_truncated == 1 and store.manifest["n_truncated"] == 1
    assert store.lengths.tolist() == [4, 16]
    assert store.token_ids[store.offsets[2] - 1] == SEP_ID  # the closing [SEP] is kept


def test_float16_storage_is_within_its_rounding_of_float32(tiny_texts, mock_store, tmp_path):
    half = encode_texts(tiny_texts, model=MockEncoder(), dtype="float16", out=tmp_path / "h", cache=False)
    assert half.embeddings.dtype == np.float16
    full = np.asarray(mock_store.embeddings[0], dtype=np.float64)
    # each stored value is off by ≤ 2⁻¹¹·|x| (+2⁻²⁵ if subnormal): elementwise, and hence for the means
    error = np.abs(np.asarray(half.embeddings[0], dtype=np.float64) - full)
    assert np.all(error <= HALF_UNIT * np.abs(full) + HALF_TINY)
    half_means, full_means = half.means(), mock_store.means()
    for i in range(len(mock_store)):
        rows = full[mock_store.offsets[i] : mock_store.offsets[i + 1]]
        # plus the float32 rounding of each returned mean (≤ eps32/2 relative, twice)
        bound = HALF_UNIT * np.abs(rows).mean(axis=0) + HALF_TINY + EPS32 * np.abs(rows.mean(axis=0))
        assert np.all(np.abs(half_means[i] - full_means[i]) <= bound)


def test_all_layers_are_stored_and_last_equals_default(tiny_texts, mock_store, tmp_path):
    encoder = MockEncoder()
    store = encode_texts(tiny_texts[:3], model=encoder, layers="all", out=tmp_path / "a", cache=False)
    assert store.layers == list(range(encoder.num_layers + 1))
    for i in range(3):
        # the mock's states are a pure function of (token, position, layer): identical bits
        np.testing.assert_array_equal(store.tokens(i, layer=encoder.num_layers), mock_store.tokens(i))
    assert not np.array_equal(store.tokens(0, layer=0), store.tokens(0))
    with pytest.raises(RagDiagError, match="not in this token store"):
        mock_store.tokens(0, layer=0)


def test_parse_layers():
    assert parse_layers("last", 6) == [6]
    assert parse_layers("all", 2) == [0, 1, 2]
    assert parse_layers("3,1,3", 6) == [1, 3]
    assert parse_layers(-1, 6) == [6] and parse_layers([0, -2], 6) == [0, 5]
    with pytest.raises(RagDiagError, match="outside 0..6"):
        parse_layers(7, 6)
    with pytest.raises(RagDiagError, match="'last', 'all' or integers"):
        parse_layers("first", 6)


def test_cache_key_changes_with_everything_that_changes_the_numbers():
    base = cache_key(MockEncoder(), [2], "float32", "abc")
    assert base == cache_key(MockEncoder(), [2], "float32", "abc") and len(base) == 32
    others = {
        cache_key(MockEncoder(dim=8), [2], "float32", "abc"),
        cache_key(MockEncoder(max_seq_length=16), [2], "float32", "abc"),
        cache_key(MockEncoder(), [1, 2], "float32", "abc"),
        cache_key(MockEncoder(), [2], "float16", "abc"),
        cache_key(MockEncoder(), [2], "float32", "abd"),
    }
    assert base not in others and len(others) == 5


def test_ids_and_text_order_are_part_of_the_cache_key(tiny_texts, private_cache, counting):
    encode_texts(tiny_texts[:2], model=counting)
    renamed = encode_texts(tiny_texts[:2], model=counting, ids=["a", "b"])
    assert not renamed.report.cache_hit and renamed.doc_ids == ["a", "b"]
    swapped = encode_texts(tiny_texts[1::-1], model=counting)
    assert not swapped.report.cache_hit and counting.calls == 3


@pytest.mark.parametrize(
    ("texts", "message"),
    [([], "empty"), (["ok", "   "], "empty"), (["a", "b"], None)],
)
def test_bad_texts_are_refused(tmp_path, texts, message):
    if message is None:
        with pytest.raises(RagDiagError, match="duplicate"):
            encode_texts(texts, model=MockEncoder(), ids=["x", "x"], out=tmp_path / "s", cache=False)
        return
    with pytest.raises(RagDiagError, match=message):
        encode_texts(texts, model=MockEncoder(), out=tmp_path / "s", cache=False)
    assert not (tmp_path / "s").exists()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(RagDiagError, match="float32 or float16"):
        encode_texts(["a"], model=MockEncoder(), dtype="float64", out=tmp_path / "s", cache=False)
    with pytest.raises(RagDiagError, match="batch size"):
        encode_texts(["a"], model=MockEncoder(), batch_size=0, out=tmp_path / "s", cache=False)
    with pytest.raises(RagDiagError, match="output folder is needed"):
        encode_texts(["a"], model=MockEncoder(), cache=False)


def test_cache_false_never_deletes_a_foreign_output_folder(tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a token store")
    with pytest.raises(RagDiagError, match="refusing"):
        encode_texts(["a b"], model=MockEncoder(), out=foreign, cache=False)
    assert (foreign / "notes.txt").read_text() == "not a token store"


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


def test_max_store_refuses_before_any_pass_and_names_float16(tiny_texts, tmp_path, counting):
    size = sum(len(ids) for ids in counting.tokenize(tiny_texts).input_ids) * counting.dim * 4  # 1 layer, float32
    with pytest.raises(RagDiagError, match=r"over --max-store .*--dtype float16 would take"):
        encode_texts(tiny_texts, model=counting, out=tmp_path / "big", cache=False, max_store=size - 1)
    assert not (tmp_path / "big").exists() and CountingEncoder.calls == 0
    store = encode_texts(tiny_texts, model=counting, out=tmp_path / "fits", cache=False, max_store=size)
    assert store.embeddings.nbytes == size  # the cap is the store's exact size


def test_max_store_holds_for_a_cached_store_too(tiny_texts, tmp_path, counting, private_cache):
    """A store already in the cache is published as a new one would be: over --max-store it is refused too."""
    size = sum(len(ids) for ids in counting.tokenize(tiny_texts).input_ids) * counting.dim * 4
    encode_texts(tiny_texts, model=counting, out=tmp_path / "first")  # now in the cache
    calls = CountingEncoder.calls
    with pytest.raises(RagDiagError, match=r"over --max-store"):
        encode_texts(tiny_texts, model=counting, out=tmp_path / "again", max_store=size - 1)
    assert not (tmp_path / "again").exists() and CountingEncoder.calls == calls
    assert encode_texts(tiny_texts, model=counting, out=tmp_path / "fits", max_store=size).report.cache_hit


def test_a_tiny_memory_budget_writes_the_same_store(tiny_texts, mock_store, tmp_path):
    # a 1-byte budget flushes and unmaps after every pass: the same bytes on disk
    small = encode_texts(tiny_texts, model=MockEncoder(), out=tmp_path / "small", cache=False, batch_size=2,
                         memory_budget=1)
    np.testing.assert_array_equal(np.asarray(small.embeddings), np.asarray(mock_store.embeddings))
    np.testing.assert_array_equal(small.offsets, mock_store.offsets)


def test_cli_encode_max_store_is_a_one_line_error(tmp_path, capsys):
    from rag_diag.cli import main

    corpus = tmp_path / "texts.txt"
    corpus.write_text("one text\nanother text\n")
    code = main(["encode", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--model", "minilm",
                 "--max-store", "0.000000001"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert code != 0 and err.startswith("error: the token store would take") and "KiB, over --max-store 1 B" in err
    assert not (tmp_path / "out").exists()
    code = main(["encode", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--ray-address", "x:1"])
    assert code != 0 and "--ray-address needs --engine ray" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- real model (slow)


def forward_atol(hidden: np.ndarray, layers: int = 6, width: int = 1536) -> float:
    """Two float32 forward passes of the same weights on the same tokens, differing only in padding and
    batch (so in GEMM blocking and summation order). Per layer a k-term float32 dot product is off by
    ≲ √k·eps32·scale for random-order rounding (k ≤ 1536, the MiniLM FFN width), and L = 6 layers add
    up. This is a round-off *estimate*, not a rigorous bound (LayerNorm can amplify); scale = max|h|."""
    return layers * np.sqrt(width) * EPS32 * float(np.abs(hidden).max())


@pytest.mark.slow
def test_token_rows_equal_transformers_last_hidden_state(minilm, tiny_texts, tiny_store):
    """Independent forward pass with a padded batch: non-padding rows must match the store."""
    from transformers import AutoModel, AutoTokenizer

    from rag_diag.models.registry import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = AutoModel.from_pretrained(str(minilm_path())).eval()
    batch = tokenizer(tiny_texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state.numpy()
    atol = forward_atol(hidden)
    for i in range(len(tiny_texts)):
        n = int(batch["attention_mask"][i].sum())
        assert tiny_store.lengths[i] == n
        np.testing.assert_allclose(tiny_store.tokens(i), hidden[i, :n], rtol=0, atol=atol)
        np.testing.assert_array_equal(tiny_store.token_ids[tiny_store.offsets[i] : tiny_store.offsets[i + 1]],
                                      batch["input_ids"][i, :n].numpy())


@pytest.mark.slow
def test_store_mean_equals_sentence_transformers_encode(tiny_texts, tiny_store):
    """Mean of stored tokens == sentence-transformers mean pooling (its Normalize module removed)."""
    from sentence_transformers import SentenceTransformer

    from rag_diag.models.registry import minilm_path

    full = SentenceTransformer(str(minilm_path()), device="cpu")
    unnormalised = SentenceTransformer(modules=[full[0], full[1]], device="cpu")
    reference = unnormalised.encode(tiny_texts, normalize_embeddings=False, batch_size=3)
    rows = np.asarray(tiny_store.embeddings[0])
    # forward differences (other batches) + ST's float32 mean of ≤ 256 rows (≤ n·eps32·max|h|)
    atol = forward_atol(rows) + int(tiny_store.lengths.max()) * EPS32 * float(np.abs(rows).max())
    np.testing.assert_allclose(tiny_store.means(), reference, rtol=0, atol=atol)


@pytest.mark.slow
def test_special_mask_flags_cls_and_sep_of_minilm(tiny_store, minilm):
    tokenizer = minilm.tokenizer
    for i in range(len(tiny_store)):
        start, stop = tiny_store.offsets[i], tiny_store.offsets[i + 1]
        ids = tiny_store.token_ids[start:stop]
        mask = tiny_store.special_mask[start:stop]
        assert ids[0] == tokenizer.cls_token_id and mask[0]
        assert ids[-1] == tokenizer.sep_token_id and mask[-1]
        assert not mask[1:-1].any()


@pytest.mark.slow
def test_real_model_cache_hit_runs_zero_forward_passes(minilm, tiny_texts, private_cache):
    calls = {"n": 0}

    def hook(module, args, kwargs, output):
        calls["n"] += 1

    handle = minilm.model.register_forward_hook(hook, with_kwargs=True)
    try:
        first = encode_texts(tiny_texts, model=minilm, batch_size=4)
        assert calls["n"] == 2 and first.report.forward_passes == 2 and not first.report.cache_hit
        second = encode_texts(tiny_texts, model=minilm, batch_size=4)
        assert calls["n"] == 2 and second.report.cache_hit and second.report.forward_passes == 0
    finally:
        handle.remove()
    np.testing.assert_array_equal(np.asarray(first.embeddings), np.asarray(second.embeddings))


@pytest.mark.slow
def test_real_model_truncation_is_counted(minilm, tmp_path):
    store = encode_texts(["short text", "free software " * 400], model=minilm, out=tmp_path / "s", cache=False)
    assert store.report.n_truncated == 1
    assert store.lengths[1] == minilm.max_seq_length == 256


@pytest.mark.slow
def test_real_model_float16_and_all_layers(minilm, tiny_texts, tiny_store, tmp_path):
    half = encode_texts(tiny_texts, model=minilm, dtype="float16", out=tmp_path / "h", cache=False)
    assert half.embeddings.dtype == np.float16
    full = np.asarray(tiny_store.embeddings[0], dtype=np.float64)
    # the same forward pass (same batch), then float16 rounding: ≤ 2⁻¹¹·|x| + 2⁻²⁵ per value
    error = np.abs(np.asarray(half.embeddings[0], dtype=np.float64) - full)
    assert np.all(error <= HALF_UNIT * np.abs(full) + HALF_TINY)
    store = encode_texts(tiny_texts[:3], model=minilm, layers="all", out=tmp_path / "a", cache=False)
    assert store.layers == list(range(minilm.num_layers + 1))
    for i in range(3):  # another batch (3 texts, not 8): a forward-pass round-off difference
        np.testing.assert_allclose(store.tokens(i, layer=minilm.num_layers), tiny_store.tokens(i), rtol=0,
                                   atol=forward_atol(full))
    assert not np.allclose(store.tokens(0, layer=0), store.tokens(0))


@pytest.mark.slow
def test_cli_encode_writes_store_and_reports_cache(tmp_path, tiny_texts, capsys):
    from rag_diag.cli import main

    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(tiny_texts) + "\n")
    assert main(["encode", "--corpus", str(corpus), "--out", str(tmp_path / "store")]) == 0
    store = TokenStore.open(tmp_path / "store")
    assert store.doc_ids == [str(i) for i in range(len(tiny_texts))]
    assert main(["encode", "--corpus", str(corpus), "--out", str(tmp_path / "store2")]) == 0
    assert "cache hit" in capsys.readouterr().out


def test_scattered_token_reads_keep_a_bounded_part_of_the_store_mapped(tmp_path):
    """Reading every text of a 384 MiB store in a random order (as re-ranking and diagnosis do) drops the mapping's
    pages every READ_RELEASE_BYTES read. A fault on a file just written may map a whole large folio (measured here:
    ≈ 6 × the rows read: 105 MiB at most), so the bound is half the store; without the drops the scan mapped all
    of it, 386 MiB."""
    from rag_diag.tokens.store import READ_RELEASE_BYTES, TokenStore

    n_docs, n_tokens, dim = 1024, 256, 384
    matrix = np.lib.format.open_memmap(tmp_path / "embeddings.npy", mode="w+", dtype=np.float32,
                                       shape=(1, n_docs * n_tokens, dim))
    for start in range(0, n_docs * n_tokens, 1 << 14):
        matrix[0, start : start + (1 << 14)] = np.arange(start, start + (1 << 14))[:, None]
    matrix.flush()
    del matrix
    store = TokenStore(path=tmp_path, doc_ids=[str(i) for i in range(n_docs)],
                       offsets=np.arange(n_docs + 1) * n_tokens,
                       embeddings=np.load(tmp_path / "embeddings.npy", mmap_mode="r"),
                       token_ids=np.zeros(n_docs * n_tokens, dtype=np.int32),
                       special_mask=np.zeros(n_docs * n_tokens, dtype=bool),
                       full_lengths=np.full(n_docs, n_tokens), layers=[6])
    with open("/proc/self/statm") as handle:
        before = int(handle.read().split()[1]) * 4096
    grown = 0
    for doc in np.random.default_rng(0).permutation(n_docs):
        rows = store.tokens(int(doc))
        first = int(doc) * n_tokens  # row j of text doc holds the value first + j in every column
        assert float(rows.sum(dtype=np.float64)) == dim * (n_tokens * first + n_tokens * (n_tokens - 1) / 2)
        with open("/proc/self/statm") as handle:
            grown = max(grown, int(handle.read().split()[1]) * 4096 - before)
    assert READ_RELEASE_BYTES <= 16 * 2**20
    assert grown <= n_docs * n_tokens * dim * 4 / 2, f"{grown / 2**20:.0f} MiB of a 384 MiB store mapped"


@pytest.mark.parametrize("chunk_rows", [1, 7, 1 << 14])
@pytest.mark.parametrize("drop_special", [False, True])
def test_means_in_chunks_equal_a_float64_reference(mock_store, chunk_rows, drop_special):
    """Streamed means (any chunk size, special tokens kept or dropped) == per-text float64 means, rounded once to
    float32: both accumulate the same float32 values in float64 (each ≤ n·eps64·max|x| off), far below one float32
    rounding (eps32/2 relative)."""
    reference = np.array([mock_store.tokens(i, drop_special=drop_special).astype(np.float64).mean(axis=0)
                          for i in range(len(mock_store))])
    got = mock_store.means(drop_special=drop_special, chunk_rows=chunk_rows)
    assert got.dtype == np.float32
    atol = np.abs(reference) * EPS32 / 2 + 2 * int(mock_store.lengths.max()) * np.finfo(np.float64).eps * float(
        np.abs(np.asarray(mock_store.embeddings[-1])).max())
    assert (np.abs(got - reference) <= atol).all()
