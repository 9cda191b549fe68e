"""The public API: ``rag_diag.encode_texts`` stays a function however often it is called, and after
the submodule ``rag_diag.tokens.extract`` has been imported (no submodule shadows it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rag_diag
from rag_diag.models.mock import MockEncoder
from rag_diag.tokens.store import TokenStore


def test_encode_texts_twice_with_the_mock(tiny_texts, tmp_path):
    first = rag_diag.encode_texts(tiny_texts, model=MockEncoder(), out=tmp_path / "a", cache=False)
    second = rag_diag.encode_texts(tiny_texts[:3], model=MockEncoder(), out=tmp_path / "b", cache=False)
    assert isinstance(first, TokenStore) and isinstance(second, TokenStore)
    assert len(first) == len(tiny_texts) and len(second) == 3
    np.testing.assert_array_equal(first.tokens(0), second.tokens(0))


def test_encode_texts_survives_importing_the_extract_module(tiny_texts, tmp_path):
    import rag_diag.tokens.extract  # noqa: F401

    assert callable(rag_diag.encode_texts) and not isinstance(rag_diag.encode_texts, type(rag_diag))
    store = rag_diag.encode_texts(tiny_texts[:2], model=MockEncoder(), out=tmp_path / "s", cache=False)
    assert isinstance(store, TokenStore) and store.report is not None and not store.report.cache_hit
    assert "encode_texts" in rag_diag.__all__


def test_encode_texts_twice_in_a_fresh_interpreter(tmp_path):
    """Nothing imported beforehand by other tests: call, import the submodule, call again."""
    script = textwrap.dedent(
        f"""
        import rag_diag
        from rag_diag.models.mock import MockEncoder
        from rag_diag.tokens.store import TokenStore

        a = rag_diag.encode_texts(["one text", "two texts"], model=MockEncoder(), out={str(tmp_path / "a")!r},
                                  cache=False)
        import rag_diag.tokens.extract
        b = rag_diag.encode_texts(["one text"], model=MockEncoder(), out={str(tmp_path / "b")!r}, cache=False)
        assert isinstance(a, TokenStore) and isinstance(b, TokenStore), (type(a), type(b))
        assert callable(rag_diag.encode_texts)
        print("ok", len(a), len(b))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "2", "1"]


def test_encode_texts_is_keyword_only_after_texts(tiny_texts, tmp_path):
    with pytest.raises(TypeError):
        rag_diag.encode_texts(tiny_texts, MockEncoder())  # type: ignore[misc]


@pytest.mark.slow
def test_encode_texts_with_the_real_model_after_the_mock(minilm, tiny_texts, tmp_path):
    mock = rag_diag.encode_texts(tiny_texts[:2], model=MockEncoder(), out=tmp_path / "m", cache=False)
    real = rag_diag.encode_texts(tiny_texts[:2], model=minilm, out=tmp_path / "r", cache=False)
    by_name = rag_diag.encode_texts(tiny_texts[:2], model="minilm", out=tmp_path / "n", cache=False)
    assert all(isinstance(s, TokenStore) for s in (mock, real, by_name))
    assert mock.dim == 16 and real.dim == by_name.dim == 384
    # the registered name loads the same (memoised) encoder: the same float32 operations, identical bits
    np.testing.assert_array_equal(np.asarray(real.embeddings), np.asarray(by_name.embeddings))
