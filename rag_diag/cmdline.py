"""The one command-line recorder: the ``rag-diag`` call that reproduces a result.

The same spelling serves three uses: the argv a pipeline step runs (:func:`argv`), the command line a
manifest records (:func:`command_line`) and what ``rag-diag run`` prints for each step.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any


def argv(command: Sequence[str], options: Mapping[str, Any], positional: Sequence[str] = ()) -> list[str]:
    """``[*command, *positional values, --opt value …]`` in the given order.

    ``True`` becomes ``--flag`` and ``False`` ``--no-flag`` (Typer's spelling for boolean options),
    ``None`` is left out, lists are comma-joined and everything else is written with ``str``.
    """
    words = [*command, *(str(options[name]) for name in positional if options.get(name) is not None)]
    for name, value in options.items():
        if name in positional or value is None:
            continue
        flag = name.replace("_", "-")
        if value is True:
            words.append(f"--{flag}")
        elif value is False:
            words.append(f"--no-{flag}")
        elif isinstance(value, list | tuple):
            words += [f"--{flag}", ",".join(str(v) for v in value)]
        else:
            words += [f"--{flag}", str(value)]
    return words


def command_line(command: str | Sequence[str], options: Mapping[str, Any], positional: Sequence[str] = ()) -> str:
    """The shell-quoted ``rag-diag …`` line for ``command`` and ``options`` (see :func:`argv`)."""
    words = [command] if isinstance(command, str) else list(command)
    return shlex.join(["rag-diag", *argv(words, options, positional)])
