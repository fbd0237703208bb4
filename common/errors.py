"""The one user-error type, and how every command line reports it: one red line naming the file or value, exit 1."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape


class UserError(RuntimeError):
    """Bad input a user can fix (a missing or damaged file, a wrong flag value); the message names it."""


def report_user_error(err: UserError) -> int:
    """Print `error: <message>` on stderr and return the exit code 1."""
    Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False, soft_wrap=True)
    return 1
