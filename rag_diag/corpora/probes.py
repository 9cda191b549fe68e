"""Probe queries for a knowledge base without queries, made from its own documents.

Both probes start from a seeded sample of documents and :func:`perturb_corpus`, which makes a copy of
each with one meaning-bearing edit (a number, a negation, "only" ↔ "or later", a swapped word):

- **copy probes** (audit: the store must not change): the query is the whole edited copy and its one
  relevant document is the original. The copy is one edit away from the original and at least as
  far from every other document *unless* the original has a near-duplicate that differs from it by
  about as little; a miss means the index cannot resolve that document from its near-duplicates.
- **distractor probes** (choosing a pooling: the corpus may grow): the edited copies join the corpus
  as distractors, and the generator's targeted queries must find the original, not its copy.

Copies identical to an existing text are dropped.
"""

from __future__ import annotations

from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.perturb import perturb_corpus
from rag_diag.errors import RagDiagError
from rag_diag.sampling import seeded_sample

NO_EDIT = "no document has a word the perturbation generator can edit: give --queries and --qrels"


def _sample(corpus: Corpus, size: int, seed: int) -> Corpus:
    rows = seeded_sample(len(corpus), size, seed)
    return Corpus(ids=[corpus.ids[r] for r in rows], texts=[corpus.texts[r] for r in rows])


def copy_probes(corpus: Corpus, size: int, seed: int) -> tuple[Queries, Qrels]:
    """Edited copies of a seeded sample of documents as queries, each judged relevant to its original."""
    perturbed = perturb_corpus(_sample(corpus, size, seed), seed=seed)
    variant_text = dict(zip(perturbed.docs.ids, perturbed.docs.texts, strict=True))
    existing = set(corpus.texts)
    edits = [e for e in perturbed.edits if variant_text[e.variant_id] not in existing]
    if not edits:
        raise RagDiagError(f"{corpus.source or 'the corpus'}: {NO_EDIT}")
    ids = [f"probe~{edit.variant_id}" for edit in edits]
    queries = Queries(
        ids=ids, texts=[variant_text[e.variant_id] for e in edits],
        metadata=[{"source": e.source_id, "edit": e.edit, "before": e.before, "after": e.after} for e in edits],
    )
    return queries, Qrels({query_id: {edit.source_id: 1} for query_id, edit in zip(ids, edits, strict=True)})


def distractor_probes(corpus: Corpus, size: int, seed: int) -> tuple[Corpus, Queries, Qrels]:
    """The corpus plus edited copies of a seeded sample as distractors, with targeted queries and qrels."""
    subset = _sample(corpus, size, seed)
    perturbed = perturb_corpus(subset, seed=seed)
    if not perturbed.edits:
        raise RagDiagError(NO_EDIT)
    existing = set(corpus.texts)
    variants = [(e.variant_id, t) for e, t in zip(perturbed.edits, perturbed.docs.texts[len(subset):], strict=True)
                if t not in existing]
    keep = {variant_id for variant_id, _ in variants}
    metadata = corpus.metadata or [{} for _ in corpus.ids]
    docs = Corpus(
        ids=corpus.ids + [v for v, _ in variants], texts=corpus.texts + [t for _, t in variants],
        source=corpus.source, metadata=metadata + [{} for _ in variants],
    )
    pairs = [(q, t) for q, t, e in zip(perturbed.queries.ids, perturbed.queries.texts, perturbed.edits, strict=True)
             if e.variant_id in keep]
    queries = Queries(ids=[q for q, _ in pairs], texts=[t for _, t in pairs])
    return docs, queries, Qrels({q: perturbed.qrels.judgements[q] for q, _ in pairs})
