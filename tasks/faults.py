"""Fault injection for the reliability tests: make a capture actor die or fail on chosen shards.

Off unless `GPT_STATS_FAULTS` is set, e.g. `exit@3x1,raise@5x9`: `exit` ends the actor's process abruptly (as an
out-of-memory kill does), `raise` raises an exception; `@3` is the shard index; `x1` the number of times it fires
across retries and restarted actors, counted with files in `GPT_STATS_FAULT_DIR` (shared by all processes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SPEC = re.compile(r"^(exit|raise)@(\d+)x(\d+)$")


class InjectedFault(RuntimeError):
    """The exception a `raise` fault throws."""


def maybe_fail(shard: int) -> None:
    specs = os.environ.get("GPT_STATS_FAULTS", "")
    if not specs:
        return
    folder = Path(os.environ["GPT_STATS_FAULT_DIR"])
    for spec in specs.split(","):
        m = SPEC.match(spec.strip())
        if not m or int(m.group(2)) != shard:
            continue
        kind, times = m.group(1), int(m.group(3))
        fired = len(list(folder.glob(f"{kind}-{shard}-*")))
        if fired >= times:
            continue
        (folder / f"{kind}-{shard}-{fired}").touch()
        if kind == "exit":
            os._exit(1)
        raise InjectedFault(f"injected fault on shard {shard}")
