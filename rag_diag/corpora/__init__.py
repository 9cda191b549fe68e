"""Knowledge bases: BEIR / TREC / table I/O, builders for the bundled corpora, a near-duplicate generator."""
