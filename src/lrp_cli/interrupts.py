"""Ctrl-C and SIGTERM during a command: written files stay whole, temporary files go, and the exit code names
the signal (128 + its number: 130 for SIGINT, 143 for SIGTERM)."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from contextlib import contextmanager

import click

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived; a BaseException like KeyboardInterrupt, so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def deferred():
    """Holds SIGINT and SIGTERM back until the block ends, then delivers them, so that a set of writes and
    renames is never cut in half (signal handlers can only be set in the main thread; elsewhere a no-op)."""
    if not _in_main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        if caught:
            signal.raise_signal(caught[0])


def exit_on_signal(command):
    """Returns the command wrapped so that SIGINT/SIGTERM end it with a one-line error and exit 128 + signal
    (SIGTERM would otherwise kill Python at once, leaving temporary files behind)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _raise_interrupted) if _in_main_thread() else None
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            _stop(signal.SIGINT)
        except Interrupted as exc:
            _stop(exc.signum)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return wrapper


def _stop(signum: int):
    click.echo(f"error: interrupted by {signal.Signals(signum).name}; the files written so far are complete",
               err=True)
    sys.exit(128 + signum)
