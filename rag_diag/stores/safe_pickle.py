"""Unpickle a LangChain FAISS ``index.pkl`` without running code from the file.

``FAISS.save_local`` pickles ``(InMemoryDocstore, {row: docstore id})`` whose documents are
``langchain_core`` ``Document`` objects. A pickle can name any importable callable (``os.system``,
``subprocess.run`` …) and have it called while loading, so :class:`StoreUnpickler` resolves only the
globals such a store needs — the docstore and document classes plus a few inert builtin, collections
and datetime types that metadata may hold — and refuses every other one with :class:`RefusedGlobal`
before anything is imported or called.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

# The LangChain classes a store needs: (module, name) as pickled -> (module, name) of the class it must be.
_LANGCHAIN_CLASSES: dict[tuple[str, str], tuple[str, str]] = {
    ("langchain_community.docstore.in_memory", "InMemoryDocstore"): (
        "langchain_community.docstore.in_memory", "InMemoryDocstore",
    ),
    ("langchain_core.documents.base", "Document"): ("langchain_core.documents.base", "Document"),
    ("langchain_core.documents", "Document"): ("langchain_core.documents.base", "Document"),
}

# Inert types that document metadata (or an older pickle protocol) may name: constructing them runs no
# user code and touches nothing outside the process.
_HARMLESS: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("datetime", "date"),
    ("datetime", "datetime"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("uuid", "UUID"),
})


# Python 2 module names that pickle protocols 0-2 write for builtins (the default unpickler renames them too).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocols 0-2 use to rebuild ``bytes``: latin-1 only.

    The real function can reach any registered codec; a store needs exactly this one.
    """
    if encoding.replace("-", "").replace("_", "").lower() not in {"latin1", "iso88591"} or errors != "strict":
        raise RefusedGlobal("_codecs", f"encode (codec {encoding!r})")
    if not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode expects a str")
    return text.encode("latin-1")


class RefusedGlobal(pickle.UnpicklingError):  # noqa: N818  (an UnpicklingError, named for what it means)
    """The pickle names a global that is not on the allow-list; ``module`` and ``name`` say which."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"refused global '{module}.{name}'")
        self.module = module
        self.name = name

    @property
    def qualified(self) -> str:
        """``module.name`` as the pickle spelled it."""
        return f"{self.module}.{self.name}"


def allowed_globals() -> frozenset[tuple[str, str]]:
    """Every (module, name) pair :class:`StoreUnpickler` resolves (``_codecs.encode`` to a latin-1-only shim)."""
    return frozenset(_LANGCHAIN_CLASSES) | _HARMLESS | {("_codecs", "encode")}


class StoreUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the allow-listed globals; anything else raises :class:`RefusedGlobal`.

    Names are compared exactly, before any import, so dotted attribute paths (``Document.__init__``),
    look-alike modules and every callable outside the list are refused without being imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if it is allow-listed, else refuse it."""
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _HARMLESS:
            return getattr(importlib.import_module(module), name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        target = _LANGCHAIN_CLASSES.get((module, name))
        if target is None:
            raise RefusedGlobal(module, name)
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid: Any) -> Any:
        """Stores never use persistent ids; refuse them like an unknown global."""
        raise pickle.UnpicklingError("persistent ids are not allowed in a LangChain store")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`StoreUnpickler` (raises :class:`RefusedGlobal` for other globals)."""
    return StoreUnpickler(io.BytesIO(data)).load()
