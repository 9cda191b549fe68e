"""Command-line interface: thin Typer commands over the public API.

``main`` turns every user mistake into one line on stderr and an exit status, never a traceback:

- a :class:`~rag_diag.errors.RagDiagError` (bad input, refused output …): ``error: <message>``, exit 2;
- a usage error (missing or unknown option, a value out of range, no command): ``error: <message>``, exit 2;
- an ``OSError`` (disk full, permission denied …): ``error: <message>``, exit 1;
- an interrupt (Ctrl-C): one line saying that nothing was published, exit 130.

Typer 0.29 ships its own copy of click (``typer._click``), so the exceptions it raises are *not*
``click.ClickException``; both families are caught here.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from typer import _click as typer_click
from typer.exceptions import Abort as TyperAbort
from typer.exceptions import Exit as TyperExit

from rag_diag import atomic
from rag_diag.cli import (  # noqa: F401  (register commands)
    audit,
    choose_pooling,
    collapse,
    corpora,
    diagnose,
    encode,
    evaluate,
    index,
    models,
    run,
    store,
)
from rag_diag.cli.app import app
from rag_diag.errors import RagDiagError

INTERRUPTED = "error: interrupted; nothing was published (outputs are written atomically)"
INTERRUPTED_STATUS = 130


def _exception_classes() -> tuple[tuple[type[BaseException], ...], ...]:
    """(no-args, usage, click, exit, abort) exception classes of typer's vendored click and of click, if installed."""
    families: list[Any] = [typer_click.exceptions]
    try:  # a command written against plain click raises click's own classes
        import click

        families.append(click.exceptions)
    except ImportError:  # pragma: no cover - click is optional
        pass
    no_args = tuple(f.NoArgsIsHelpError for f in families if hasattr(f, "NoArgsIsHelpError"))
    usage = tuple(f.UsageError for f in families)
    click_errors = tuple(f.ClickException for f in families)
    exits = (TyperExit, *(f.Exit for f in families if hasattr(f, "Exit")))
    aborts = (TyperAbort, *(f.Abort for f in families if hasattr(f, "Abort")))
    return no_args, usage, click_errors, exits, aborts


NO_ARGS_ERRORS, USAGE_ERRORS, CLICK_ERRORS, EXIT_SIGNALS, ABORT_SIGNALS = _exception_classes()


def _one_line(text: Any) -> str:
    """``text`` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(text).split())


def _fail(message: Any, status: int) -> int:
    """Print ``error: <message>`` as exactly one line on stderr and return ``status``."""
    print(f"error: {_one_line(message) or 'unknown error'}", file=sys.stderr)
    return status


def _message(exc: BaseException) -> str:
    """A click exception's formatted message (``format_message``), or its text for anything else."""
    format_message = getattr(exc, "format_message", None)
    return str(format_message()) if callable(format_message) else str(exc)


def _usage_message(exc: BaseException) -> str:
    """A usage error's message plus where to find help (``rag-diag index --help``)."""
    message = _message(exc)
    context = getattr(exc, "ctx", None)
    command = getattr(context, "command_path", None) if context is not None else None
    return f"{message} (see '{command} --help')" if command else message


def _os_message(exc: OSError) -> str:
    """``<reason>: <file>`` for an OSError, without the ``[Errno N]`` noise."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{reason}: {' -> '.join(names)}" if names else reason


def _interrupted() -> int:
    """Say on one line that the command was interrupted and that no output was published (exit 130)."""
    print(INTERRUPTED, file=sys.stderr)
    return INTERRUPTED_STATUS


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 ok, 1 an operating-system error, 2 a user error (bad input or usage), 130 interrupted. Each
    error prints one ``error: …`` line on stderr. Every run starts with no protected inputs.
    """
    atomic.clear_protected()
    try:
        result = app(args=argv, standalone_mode=False, prog_name="rag-diag")
    except RagDiagError as exc:
        return _fail(exc, 2)
    except NO_ARGS_ERRORS as exc:
        print(_message(exc))  # the help, on stdout: the one error line stays alone on stderr
        context = getattr(exc, "ctx", None)
        command = getattr(context, "command_path", "rag-diag")
        return _fail(f"no command given (see '{command} --help')", 2)
    except USAGE_ERRORS as exc:
        return _fail(_usage_message(exc), int(getattr(exc, "exit_code", 2)))
    except CLICK_ERRORS as exc:
        return _fail(_message(exc), int(getattr(exc, "exit_code", 1)))
    except EXIT_SIGNALS as exc:
        status = int(getattr(exc, "exit_code", 0) or 0)
        return _interrupted() if status == INTERRUPTED_STATUS else status
    except ABORT_SIGNALS:
        return _fail("aborted; nothing was published", 1)
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as exc:
        return _fail(_os_message(exc), 1)
    if result == INTERRUPTED_STATUS and not isinstance(result, bool):
        # typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns the status silently
        return _interrupted()
    return int(result) if isinstance(result, int) else 0


def entry_point() -> NoReturn:
    """Console-script entry point: exit with :func:`main`'s status."""
    sys.exit(main())


__all__ = ["app", "main", "entry_point"]
