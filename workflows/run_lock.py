"""One driver per run directory: a lock file in it, taken before the driver touches anything there, released when
the run ends (complete, failed or interrupted).

On a local path (a shared file system included) the lock is `.run.lock`, created with O_CREAT | O_EXCL and holding
the holder's host, pid, process start time and when it took the lock. A second driver refuses with one line naming
the holder (a UserError: exit status 2). A lock whose holder is gone (same host, and its pid no longer runs, or runs
another process) is taken over with a warning; one held from another host is never taken over, since its process
cannot be checked from here: the message says which file to delete once that driver is known to be gone. (Two
drivers taking over the same stale lock in the same instant can both win; the window is the few microseconds
between reading the stale lock and removing it.)

On an object store (`s3://`, `gs://`) `pyarrow.fs` offers no conditional write (create only if absent), so the lock
is best effort there: the driver checks for a lock, writes its own and reads it back. Two drivers starting within
the same second can both pass; run one driver per `run.out` on object stores.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager

from tasks.errors import UserError
from tasks.storage import RunStore

log = logging.getLogger(__name__)

LOCK = ".run.lock"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux `/proc/PID/stat` field 22), which tells a pid
    reused by another process from the one that took the lock; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex}


def holder_gone(holder: dict) -> bool:
    """True when the holder is known to be gone: on this host, and its pid runs no process, or another one."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # runs, as another user
        pass
    start = _process_start(pid)
    return bool(start and holder.get("process_start") and start != holder["process_start"])


def _busy(store: RunStore, holder: dict | None) -> UserError:
    who = (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}" if holder
           else "its lock file cannot be read")
    return UserError(f"run directory {store.root!r} is in use by another driver ({who}); wait for it to end or set "
                     f"another run.out (if that driver is gone, delete {store.path(LOCK)})")


def _read(store: RunStore) -> dict | None:
    """The lock's content; None if it is gone; {} if it cannot be parsed."""
    try:
        data = store.read_json(LOCK)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _take_over(store: RunStore, holder: dict) -> None:
    log.warning("taking over the lock of run directory %s from a driver that is gone (host %s, pid %s, started %s)",
                store.root, holder.get("host"), holder.get("pid"), holder.get("started"))
    store.delete(LOCK)


def acquire(store: RunStore) -> dict:
    """Take the run directory's lock (creating the directory), or raise UserError naming its holder."""
    store.check_writable()  # creates the directory; an unwritable one is a UserError naming it
    me = _me()
    for _ in range(5):
        if store.local:
            try:
                fd = os.open(store.local_path(LOCK), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me) + "\n")
                return me
        elif not store.exists(LOCK):
            store.write_json(LOCK, me)
            if (_read(store) or {}).get("token") == me["token"]:
                return me
        holder = _read(store)
        if holder is None:  # released meanwhile
            continue
        if not holder or not holder_gone(holder):
            raise _busy(store, holder or None)
        _take_over(store, holder)
    raise _busy(store, _read(store) or None)


def release(store: RunStore, me: dict) -> None:
    """Remove the lock if it is still ours."""
    try:
        if (_read(store) or {}).get("token") == me["token"]:
            store.delete(LOCK)
    except OSError as exc:
        log.warning("could not remove the lock %s (%s)", store.path(LOCK), exc)


@contextmanager
def run_lock(store: RunStore):
    """Hold the run directory's lock for the block."""
    me = acquire(store)
    try:
        yield me
    finally:
        release(store, me)
