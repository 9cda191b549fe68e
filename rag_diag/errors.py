"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class RagDiagError(Exception):
    """A user-facing error: bad input, a missing optional package, a refused index or cache.

    The message is a single actionable line; the CLI prints ``error: <message>`` and exits 2.
    """

    def __init__(self, message: str) -> None:
        # Data quoted into a message (an id with a newline, say) must not break the one-line promise.
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), to quote in a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
