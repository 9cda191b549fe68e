"""Real texts for benchmarks: licence notices from licensedcode-data (ScanCode LicenseDB, nexB, CC-BY-4.0)."""

from __future__ import annotations

import importlib.resources


def licence_rule_texts(limit: int | None = None, min_words: int = 8) -> list[str]:
    """Texts of licensedcode RULE files (front matter stripped), sorted by file name, ≥ ``min_words`` words."""
    rules = importlib.resources.files("licensedcode") / "data" / "rules"
    texts: list[str] = []
    for entry in sorted(rules.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".RULE"):
            continue
        raw = entry.read_text(encoding="utf-8", errors="replace")
        parts = raw.split("---\n", 2)
        body = (parts[2] if len(parts) == 3 else raw).strip()
        if len(body.split()) >= min_words:
            texts.append(" ".join(body.split()))
        if limit is not None and len(texts) >= limit:
            break
    return texts
