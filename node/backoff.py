"""The retry policy every background client of the node shares (sync, push, witness requests).

Its own module because the sync imports the witness code and both retry: neither may import the
other just for this.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter, capped: 1, 2, 4 ... ``cap`` seconds, each drawn from
    [d/2, d] so that many nodes that failed together do not retry together."""

    def __init__(
        self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay: float = min(self.cap, self.base * float(2 ** min(self.failures, 32)))
        self.failures += 1
        return delay / 2 + self._rng.random() * delay / 2

    def reset(self) -> None:
        self.failures = 0


__all__ = ["Backoff"]
