"""Reading artefact files with one-line errors: JSON objects and parquet tables with required columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from rag_diag.errors import RagDiagError, first_line


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; corrupt JSON or another JSON type is a one-line error."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RagDiagError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RagDiagError(f"{path}: expected a JSON object")
    return value


def read_parquet(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    """A parquet table that must have ``columns``; unreadable or incomplete is a one-line error."""
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise RagDiagError(f"{path}: unreadable parquet ({first_line(exc)})") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise RagDiagError(f"{path}: missing columns {', '.join(missing)}")
    return frame


def require_files(path: str | Path, names: tuple[str, ...], what: str) -> Path:
    """``path`` as a folder holding every file in ``names``; otherwise a one-line error naming ``what``."""
    path = Path(path)
    if not path.is_dir():
        raise RagDiagError(f"{path}: no such {what} folder")
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise RagDiagError(f"{path}: not a complete {what} folder (missing {', '.join(missing)})")
    return path
