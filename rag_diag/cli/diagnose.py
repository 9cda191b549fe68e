"""CLI commands for diagnose (see the module of the same name in rag_diag)."""

from __future__ import annotations

from rag_diag.cli.app import app  # noqa: F401
