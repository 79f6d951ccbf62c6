"""What a user sees while the corpus is read and captured: a tqdm bar in a terminal, and outside one (`ray job
submit`, a batch log) a log line every `run.progress_s` seconds with tokens read and captured, the total where it
is known, tokens per second, the time left, shards done and retries."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Progress of the corpus (a `tasks.corpus.stream.Totals`) and of capture (tokens booked by `captured`)."""

    def __init__(self, every: float, corpus, done_tokens: int, terminal: bool | None = None,
                 max_tokens: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.every = float(every)
        self.corpus = corpus
        self.max_tokens = max_tokens  # `corpus.max_tokens`: the corpus ends there, however many units are left
        self.done0 = self.done = done_tokens  # captured, this attempt's and the earlier attempts'
        self.clock = clock
        self.start = self.last = clock()  # the stage's start: rates count from here
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(initial=done_tokens, unit="tok", desc="capture") if self.terminal else None

    def captured(self, tokens: int) -> None:
        self.done += tokens
        if self.bar is not None:
            if self.corpus.done and self.bar.total != self.corpus.tokens:
                self.bar.total = self.corpus.tokens
            self.bar.update(tokens)

    def line(self, shards_done: int, retries: int) -> str:
        c = self.corpus
        # this attempt's tokens over the time since the stage started: a real rate from the first shard on (actor
        # start-up included, so the ETA errs long early on); the earlier attempts' tokens took no time here
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (self.done - self.done0) / elapsed
        if c.done:
            total, read = f"{c.tokens:,}", "read"
        else:  # the total extrapolated from the units read so far
            share = c.units_read / c.units if c.units and c.units_read else 0.0  # of the corpus read so far
            if self.max_tokens and c.body_tokens:
                share = max(share, c.body_tokens / self.max_tokens)
            total = f"~{round(c.tokens / share):,}" if share else "?"
            eta = elapsed * (1 - share) / share if share else None
            read = (f"read ({c.units_read}/{c.units or '?'} units, {c.tokens / elapsed:,.0f} tok/s, "
                    f"ETA {_duration(eta)})")
        left = None
        if rate > 0 and total != "?":
            left = (int(total.lstrip("~").replace(",", "")) - self.done) / rate
        return (f"corpus: {c.tokens:,} tokens {read} ({c.documents:,} documents, {c.shards} shards); "
                f"capture: {self.done:,} of {total} tokens, {rate:,.0f} tok/s, ETA {_duration(left)}, "
                f"{shards_done} shards done, {retries} retries")

    def maybe_log(self, shards_done: int, failures: Counter) -> None:
        """Log a line if `every` seconds passed since the last (never in a terminal: the bar shows it);
        `shards_done` counts the shards captured, their statistics flushed or not."""
        now = self.clock()
        if self.terminal or now - self.last < self.every:
            return
        self.last = now
        log.info("%s", self.line(shards_done, _retries(failures)))

    def close(self, shards_done: int, failures: Counter) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            log.info("%s", self.line(shards_done, _retries(failures)))


def _retries(failures: Counter) -> int:
    return sum(v for key, v in failures.items() if isinstance(key, int))
