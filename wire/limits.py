"""Per-connection limits, sans I/O (time is passed in): a token bucket and the abuse meter."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """A rate limit: ``rate`` messages per second with bursts up to ``burst``; time is passed in."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at time ``now`` (seconds) if there are enough."""
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def give_back(self, cost: float = 1.0) -> None:
        """Return what :meth:`allow` took for a message that will be judged (and charged) again."""
        self.tokens = min(self.burst, self.tokens + cost)


@dataclass
class AbuseMeter:
    """Counts a connection's bad frames; past ``limit`` within ``window_s`` it should be closed."""

    limit: int = 20
    window_s: float = 10.0
    strikes: list[float] = field(default_factory=list)

    def strike(self, now: float) -> bool:
        """Record one bad frame at ``now``; True when the connection has earned a 1008 close."""
        self.strikes = [t for t in self.strikes if now - t < self.window_s]
        self.strikes.append(now)
        return len(self.strikes) > self.limit
