"""How the command line ends: one line for a bad command line, and a clean stop on SIGTERM.

argparse prints the whole usage (8 lines and more) before its error; a typo deserves the error
and a hint. SIGTERM (``kill``, a scheduler's time limit) ends Python without running ``finally``
blocks, so a write in progress would leave its temporary file; :func:`terminate_as_interrupt`
turns it into :class:`fairfx.files.Terminated`, a KeyboardInterrupt, so every cleanup runs as
for Ctrl-C, for the whole run (API writes get the same for the time of each write).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import ClassVar, NoReturn

from ..engine.capture import EXAMPLE_HINT
from ..files import raise_terminated


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the problem, a close option name for a
    mistyped one, and where the options are listed."""

    argv: ClassVar[list[str]] = []  # the command line being parsed (read by subcommands)

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        OneLineParser.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hint = _typo_hint(self, message)
        sys.stderr.write(f"{self.prog.split()[0]}: error: {message}{hint} (see {self.prog} -h)\n")
        sys.exit(2)


def _typo_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """``; did you mean --alpha?`` for the first option on the command line that no parser
    knows (argparse reports a missing required option before an unknown one)."""
    known = [s for a in parser._actions for s in a.option_strings]  # argparse's own list
    for parsers in (a.choices for a in parser._actions if isinstance(a.choices, dict)):
        known += [s for p in parsers.values() for a in p._actions for s in a.option_strings]
    for word in OneLineParser.argv:
        name = word.split("=")[0]
        if name.startswith("--") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            said = "" if name in message else f"; unknown option {name}"
            return said + (f"; did you mean {close[0]}?" if close else "")
    return ""


_FLAGS_HINT = (
    "The example input is [2, --channels, --image-size, --image-size] (or the first samples of "
    "a .pt --data file): check that --image-size and --channels match what the model expects"
)


def in_flags(message: str) -> str:
    """An API error's advice in the command line's terms: the example input is the flags'."""
    return message.replace(EXAMPLE_HINT, _FLAGS_HINT)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`; the previous handler is restored
    after it. (Only the main thread may set handlers; elsewhere nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
