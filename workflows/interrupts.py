"""How a run ends when it does not complete: SIGTERM handled as Ctrl-C, and the manifest told why.

SIGTERM (`ray job stop`, batch schedulers, `kill`) raises `Terminated`, a KeyboardInterrupt, in the driver's main
thread, so it unwinds exactly as Ctrl-C does: actors killed, a local cluster stopped, the lock released, the
manifest marked `interrupted` with the time, one line on stderr, exit status 143 (128 + 15; Ctrl-C: 130). A
KeyboardInterrupt can reach the driver as a plain one (Ray turns a signal caught while it waits into its own), so
the signal received is also remembered here (`received`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager

from tasks.errors import first_line, os_failure
from tasks.storage import RunStore

log = logging.getLogger(__name__)

_received: list[int] = []  # signals turned into KeyboardInterrupt during the current run


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise KeyboardInterrupt."""


def _on_sigterm(signum, frame) -> None:
    _received.append(signum)
    raise Terminated()


def received() -> signal.Signals:
    """The signal that interrupted the run: SIGTERM if one came, else SIGINT (Ctrl-C)."""
    return signal.Signals(_received[-1]) if _received else signal.SIGINT


def exit_status() -> int:
    return 128 + int(received())


def arm_sigterm() -> None:
    """Install the SIGTERM handler (again: `ray.init` installs its own, which exits with a stack dump)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextmanager
def sigterm_interrupts():
    """SIGTERM raises `Terminated` for the block; the previous handler is put back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _received.clear()
    arm_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def end_run(store: RunStore, manifest: dict, exc: BaseException, timings: dict):
    """Record in the manifest how the run ended (`interrupted` or `failed` and why; not when the run stopped before it
    took the directory over, `manifest` still empty), then raise what the command line reports: the same exception, or for an OSError from any stage (disk full), a one-line RunError."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    failure = os_failure(exc)
    if isinstance(exc, KeyboardInterrupt):
        manifest.update(status="interrupted", interrupted=now, timings=timings,
                        reason=f"{received().name}: finished shards are kept; rerun the same command to resume")
    else:
        manifest.update(status="failed", failed=now, reason=first_line(failure or exc), timings=timings)
    try:
        if manifest.get("config_hash"):  # only a run directory this attempt took over is told
            manifest.pop("finished", None)
            store.write_json("manifest.json", manifest)
    except OSError as write_error:
        log.warning("could not record the run's end in %s (%s)", store.path("manifest.json"), write_error)
    if failure is None:
        raise exc
    log.debug("the run failed on an OSError", exc_info=exc)
    raise failure from None
