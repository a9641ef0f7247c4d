"""The shared Typer app, the consoles, and the one rule for errors: a user's mistake is one red line and a
non-zero exit, never a traceback. Command modules register on `app`; this module imports none of them."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from vaekit.data import SkippedImagesWarning
from vaekit.errors import VaekitError, caused_by_interrupt
from vaekit.extras import require
from vaekit.fsutil import ran_out


def _without_flag_metavars(params: list[Any]) -> list[Any]:
    """Typer's rich help shows a type (<bool>) beside every option, which reads as if a flag took a value;
    an empty metavar is what drops it (a flag's metavar is never used to parse)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_metavars(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_metavars(super().get_params(ctx))


app = typer.Typer(
    help="Train a VAE, export it to ONNX / TensorRT, and prove the deployed artifacts compute what the model does.",
    cls=Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Not a terminal (CI logs, pipes): wide enough that parity tables keep their columns.
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

LEARN_PANEL = "Learn"
DEPLOY_PANEL = "Deploy"
MEASURE_PANEL = "Measure"


INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT (128 + the signal's number)
PARTIAL = 3  # the verified graphs were published, a precision asked for was not: the request was not met


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def stopped(message: str, signum: int = signal.SIGINT) -> typer.Exit:
    """Ctrl-C is the user's choice, not an error: one yellow line (what was kept, how to go on), rc 130
    (143 for a SIGTERM, as the shell reports a process that signal ended)."""
    err_console.print(f"[yellow]{escape(message)}[/]", highlight=False)
    return typer.Exit(INTERRUPTED - signal.SIGINT + signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[list[int]]:
    """A SIGTERM (a scheduler's stop, `kill`, a container's shutdown) unwinds like Ctrl-C, so a command cleans
    up and says what it kept instead of dying mid-write; yields the list that records it arrived."""
    seen: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


PYTHON_SHOWWARNING = warnings.showwarning


def _warning_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """vaekit's own warnings (images a folder dataset skipped) as one yellow line; others as Python shows them."""
    if issubclass(category, SkippedImagesWarning):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)
    else:
        PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


def command(panel: str, name: str | None = None) -> Callable[[F], F]:
    """app.command that first checks the command's extras, then turns user errors into one red line."""

    def decorate(fn: F) -> F:
        command_name = name or fn.__name__.replace("_", "-")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            terms: list[int] = []
            try:
                require(command_name)
                # restores showwarning and the SIGTERM handler when the command returns
                with warnings.catch_warnings(), sigterm_as_interrupt() as terms:
                    warnings.showwarning = _warning_line
                    return fn(*args, **kw)
            except KeyboardInterrupt as exc:  # train's says what it saved and the command that continues
                raise stopped(str(exc) or "interrupted", *terms[:1]) from None
            except VaekitError as exc:
                if caused_by_interrupt(exc):
                    raise stopped("interrupted", *terms[:1]) from None
                raise fail(str(exc), exc.exit_code) from None
            except MemoryError:
                raise fail("out of memory: try a smaller --batch-size") from None
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                raise fail(f"{ran_out(exc)}{where}") from None

        app.command(name=command_name, rich_help_panel=panel, cls=Command)(wrapper)
        return fn

    return decorate


def note(text: str) -> None:
    """A dim informational line on stdout."""
    out_console.print(f"[dim]{escape(text)}[/]", highlight=False)


def wrote(path: Any, what: str = "") -> None:
    """Say what a command wrote, and where."""
    out_console.print(f"[green]wrote[/] {escape(str(path))}{escape(what)}", highlight=False)
