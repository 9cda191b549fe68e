"""The optional ``bible`` knowledge base: WEB verses as queries against KJV verses, aligned by verse id.

Both translations are public domain and come from Debian (``sword-text-kjv``, ``sword-text-web``,
installed under ``/usr/share/sword``; another folder can be given in ``SWORD_PATH``), read with PyPI
``pysword`` (``pip install 'rag-diag[bible]'``). Each query (a WEB verse) has one relevant document:
the KJV verse with the same id (``<OSIS book>.<chapter>.<verse>``). Near-duplicate distractors come
for free: Numbers 7 repeats one offering twelve times, the synoptic gospels retell the same events.

Sizes: ``small`` = the New Testament corpus with :data:`SMALL_QUERIES` seeded queries; ``full`` =
the whole KJV and every aligned WEB verse; an integer N = the New Testament with N queries.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import random
from pathlib import Path
from typing import Any

from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.writers import write_beir
from rag_diag.errors import RagDiagError

MODULES = ("KJV", "WEB")
"""The two translations; a SWORD module counts as one when its id contains the name (Debian ships
``engKJV2006eb`` and ``engWEB2015eb``; older packages and other repositories use ``KJV`` / ``WEB``)."""
DEFAULT_SWORD_PATH = "/usr/share/sword"
SMALL_QUERIES = 300
INSTALL_HINT = (
    "apt-get install sword-text-kjv sword-text-web; pip install 'rag-diag[bible]' (pysword); "
    "set SWORD_PATH if the modules are not under /usr/share/sword"
)


def sword_path() -> Path:
    """The SWORD module folder: ``$SWORD_PATH`` or ``/usr/share/sword``."""
    return Path(os.environ.get("SWORD_PATH", DEFAULT_SWORD_PATH))


def module_ids() -> dict[str, str]:
    """``{"KJV": module id, "WEB": module id}`` for the translations installed under :func:`sword_path`.

    Module ids are the ``[section]`` names of the ``mods.d/*.conf`` files; the shortest id containing
    the translation's name wins (``KJV`` before ``engKJV2006eb``).
    """
    found: dict[str, str] = {}
    for conf in sorted((sword_path() / "mods.d").glob("*.conf")):
        lines = (line.strip() for line in conf.read_text(encoding="utf-8", errors="replace").splitlines())
        header = next((line for line in lines if line.startswith("[") and line.endswith("]")), None)
        if header is None:
            continue
        module = header[1:-1]
        for name in MODULES:
            if name.lower() in module.lower() and len(module) < len(found.get(name, module + "_")):
                found[name] = module
    return found


def unavailable() -> str | None:
    """None when pysword and both SWORD modules are installed, else how to install them."""
    if importlib.util.find_spec("pysword") is None:
        return f"pysword is not installed: {INSTALL_HINT}"
    missing = [name for name in MODULES if name not in module_ids()]
    if missing:
        return f"SWORD module(s) {', '.join(missing)} not found under {sword_path()}: {INSTALL_HINT}"
    return None


def read_verses(module: str, testaments: tuple[str, ...] = ("ot", "nt")) -> dict[str, str]:
    """``{"<OSIS book>.<chapter>.<verse>": text}`` for every non-empty verse of a SWORD Bible module."""
    from pysword.modules import SwordModules

    modules = SwordModules(str(sword_path()))
    modules.parse_modules()
    try:
        bible = modules.get_bible_from_module(module)
    except Exception as exc:  # pysword raises bare exceptions for unknown modules
        raise RagDiagError(f"SWORD module {module} cannot be read ({exc}): {INSTALL_HINT}") from None
    books = bible.get_structure().get_books()
    verses: dict[str, str] = {}
    for testament in testaments:
        for book in books.get(testament, []):
            ids = [
                f"{book.osis_name}.{chapter}.{verse}"
                for chapter in range(1, book.num_chapters + 1)
                for verse in range(1, book.chapter_lengths[chapter - 1] + 1)
            ]
            texts = bible.get_iter(books=[book.name], clean=True)
            for verse_id, text in zip(ids, texts, strict=False):
                text = " ".join(text.split())
                if text:
                    verses[verse_id] = text
    return verses


def build(folder: Path, size: str | int, seed: int) -> dict[str, Any]:
    """Write the KJV corpus, WEB queries and one-to-one qrels into ``folder``."""
    testaments = ("ot", "nt") if size == "full" else ("nt",)
    ids = module_ids()
    if any(name not in ids for name in MODULES):
        raise RagDiagError(f"SWORD modules KJV and WEB not found under {sword_path()}: {INSTALL_HINT}")
    kjv = read_verses(ids["KJV"], testaments)
    web = read_verses(ids["WEB"], testaments)
    aligned = sorted(set(kjv) & set(web))
    if not aligned:
        raise RagDiagError(f"no verse ids shared by KJV and WEB under {sword_path()}")
    if size != "full":
        count = min(len(aligned), SMALL_QUERIES if size == "small" else int(size))
        aligned = sorted(random.Random(seed).sample(aligned, count))
    doc_ids = sorted(kjv)
    corpus = Corpus(ids=doc_ids, texts=[kjv[i] for i in doc_ids])
    queries = Queries(ids=aligned, texts=[web[i] for i in aligned])
    write_beir(folder, corpus, queries, Qrels({verse: {verse: 1} for verse in aligned}))
    return {
        "source": {"package": "pysword + Debian sword-text-kjv, sword-text-web",
                   "version": importlib.metadata.version("pysword"),
                   "path": f"SWORD modules {ids['KJV']}, {ids['WEB']}"},
        "licence": "public domain",
        "counts": {"documents": len(corpus), "queries": len(queries)},
        "parameters": {"testaments": list(testaments), "clean": True},
    }
