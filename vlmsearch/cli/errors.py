"""User errors become one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from vlmsearch.cli import output
from vlmsearch.errors import VlmsearchError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """User errors become one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VlmsearchError as e:
            output.err.print(f"[bold red]error:[/bold red] {output.text(e)}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            output.err.print("interrupted: committed work is kept; run the command again to resume")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]
