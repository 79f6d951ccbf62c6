"""Fault injection for the reliability tests: make a capture actor die or fail on chosen shards.

Off unless `GPT_STATS_FAULTS` is set, e.g. `exit@3x1,raise@5x9,delay@*x99`: `exit` ends the actor's process
abruptly (as an out-of-memory kill does), `raise` raises an exception, `delay` sleeps a second (to keep work in
flight while a test pulls a node away), all as the shard starts; `late` raises after the shard's first forward
pass (as a GPU running out of memory mid-shard does, its statistics already fed); `@3` is the shard index (`*`
any shard); `x1` the number of times it fires per shard, across retries and restarted actors, counted with files
in `GPT_STATS_FAULT_DIR` (shared by all processes).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

SPEC = re.compile(r"^(exit|raise|delay|late)@(\d+|\*)x(\d+)$")


class InjectedFault(RuntimeError):
    """The exception a `raise` fault throws."""


def maybe_fail(shard: int, late: bool = False) -> None:
    """Fire the faults set for this shard: `late` ones when `late`, the others when not."""
    specs = os.environ.get("GPT_STATS_FAULTS", "")
    if not specs:
        return
    folder = Path(os.environ["GPT_STATS_FAULT_DIR"])
    for spec in specs.split(","):
        m = SPEC.match(spec.strip())
        if not m or m.group(2) not in ("*", str(shard)) or (m.group(1) == "late") != late:
            continue
        kind, times = m.group(1), int(m.group(3))
        fired = len(list(folder.glob(f"{kind}-{shard}-*")))
        if fired >= times:
            continue
        (folder / f"{kind}-{shard}-{fired}").touch()
        if kind == "exit":
            os._exit(1)
        if kind == "delay":
            time.sleep(1.0)
            continue
        raise InjectedFault(f"injected fault on shard {shard}")
