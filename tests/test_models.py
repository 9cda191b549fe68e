"""Model registry: offline loaders, identities, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.models import REGISTRY, list_models, load_encoder


def test_registry_lists_the_four_models_with_kinds():
    rows = {row["name"]: row for row in list_models()}
    assert rows["minilm"]["kind"] == "contrastive" and rows["minilm"]["dim"] == 384
    assert rows["mpnet"]["dim"] == 768 and rows["gemma-270m"]["kind"] == "backbone"
    assert rows["random-minilm"]["kind"] == "control"
    assert rows["minilm"]["installed"]


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(RagDiagError, match="unknown model 'no-such-model'"):
        load_encoder("no-such-model")


def test_missing_package_names_the_extra(monkeypatch):
    import rag_diag.models as models

    monkeypatch.setattr(models, "_has_distribution", lambda name: False)
    with pytest.raises(RagDiagError, match=r"rag-diag\[gemma\]"):
        models.gemma_path()
    assert not REGISTRY["gemma-270m"].installed()


def test_random_minilm_is_seeded_and_differs_from_trained(minilm):
    random_model = load_encoder("random-minilm")
    assert random_model.identity["weights_sha256"] != minilm.identity["weights_sha256"]
    import rag_diag.models as models

    again = models._load_random_minilm("cpu")
    assert again.identity["weights_sha256"] == random_model.identity["weights_sha256"]


def test_local_folder_loads_like_the_registered_name(minilm, tiny_texts, tmp_path):
    from rag_diag.encode import encode_texts
    from rag_diag.models import minilm_path

    by_path = load_encoder(str(minilm_path()))
    assert by_path.identity["weights_sha256"] == minilm.identity["weights_sha256"]
    a = encode_texts(tiny_texts[:2], model=by_path, out=tmp_path / "a", cache=False)
    b = encode_texts(tiny_texts[:2], model=minilm, out=tmp_path / "b", cache=False)
    np.testing.assert_array_equal(np.asarray(a.embeddings), np.asarray(b.embeddings))


@pytest.mark.slow
def test_mpnet_is_assembled_and_matches_sentence_transformers(tiny_texts, tmp_path):
    from sentence_transformers import SentenceTransformer

    from rag_diag.encode import encode_texts
    from rag_diag.models import mpnet_path

    encoder = load_encoder("mpnet")
    assert encoder.dim == 768
    store = encode_texts(tiny_texts[:3], model=encoder, out=tmp_path / "m", cache=False)
    full = SentenceTransformer(str(mpnet_path()), device="cpu")
    reference = SentenceTransformer(modules=[full[0], full[1]], device="cpu").encode(
        tiny_texts[:3], normalize_embeddings=False
    )
    np.testing.assert_allclose(store.means(), reference, atol=1e-5)


@pytest.mark.slow
def test_gemma_is_right_padded_so_batching_does_not_change_tokens(tiny_texts, tmp_path):
    """Padding on the left would shift rows; with right padding a text's tokens are batch-independent."""
    from rag_diag.encode import encode_texts

    encoder = load_encoder("gemma-270m")
    assert encoder.tokenizer.padding_side == "right" and encoder.dim == 640
    texts = [tiny_texts[7], tiny_texts[0]]  # short text batched with a longer one
    together = encode_texts(texts, model=encoder, out=tmp_path / "t", cache=False, batch_size=2)
    alone = encode_texts(texts[:1], model=encoder, out=tmp_path / "a", cache=False, batch_size=1)
    np.testing.assert_allclose(together.tokens(0), alone.tokens(0), atol=1e-3)
