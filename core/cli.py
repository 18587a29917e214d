"""What every command-line entry point shares: bad input is one `error:` line and exit code 2, Ctrl-C is exit
code 130, and anything else (a bug) keeps its own traceback.

    if __name__ == "__main__":
        sys.exit(cli.run(main))

Entry points also call `quiet_interrupts()` before their heavy imports, so a Ctrl-C while torch is still
importing ends the same way as one during the run. Under torchrun every rank meets the same error; rank 0 alone
prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from core.errors import UserError

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C


def _reporting() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run(main: Callable[[], int | None]) -> int:
    """Call `main` and return the process exit code: its own, 0 for None, 2 after a UserError (printed as one
    `error:` line), 130 after Ctrl-C. Other exceptions propagate with their traceback."""
    try:
        code = main()
    except UserError as e:
        if _reporting():
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        if _reporting():
            print("interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    return 0 if code is None else int(code)


def quiet_interrupts() -> None:
    """A Ctrl-C that reaches the top level outside run() (while the entry point is still importing) prints one
    line and exits 130 instead of a traceback through the import machinery."""
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted", file=sys.stderr, flush=True)
            os._exit(INTERRUPTED)  # nothing has started yet that needs cleaning up
        previous(kind, value, traceback)

    sys.excepthook = hook


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error: ...` line (exit code 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")
