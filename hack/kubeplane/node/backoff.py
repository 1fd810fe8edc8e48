"""Crash-loop back-off for one container, with the kubelet's timing (pure; time comes in as arguments).

Invariant: the first restart happens at once; each later one waits the current back-off counted from the
exit, and the back-off doubles at each restart (initial 10 s, cap 5 min) until the container has gone
`2 * cap` without a restart, which resets it.
"""

from __future__ import annotations

from dataclasses import dataclass


def go_duration(seconds: float) -> str:
    """Formats like Go's time.Duration.String() for whole seconds: 10s, 1m20s, 5m0s."""
    total = round(seconds)
    if total < 60:
        return f"{seconds:g}s" if seconds != total else f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}s"


@dataclass
class RestartBackoff:
    initial: float = 10.0
    cap: float = 300.0
    current: float = 0.0  # the window a restart must wait after an exit; 0 = no back-off yet
    last_restart: float | None = None

    def _expired(self, when: float) -> bool:
        return self.last_restart is None or when - self.last_restart > 2 * self.cap

    def restart_at(self, finished_at: float) -> float:
        """The earliest time the container may start again after exiting at `finished_at`."""
        if self.current == 0 or self._expired(finished_at):
            return finished_at
        return finished_at + self.current

    def record_restart(self, now: float) -> None:
        if self.current == 0 or self._expired(now):
            self.current = self.initial
        else:
            self.current = min(self.current * 2, self.cap)
        self.last_restart = now
