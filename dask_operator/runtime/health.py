"""Named health checks answered the way c-r's healthz package does (/healthz, /readyz).

Invariant: an endpoint is 200 "ok" only if every (non-excluded) check passes; otherwise 500 and the
`[+]name ok` / `[-]name failed: reason withheld` listing, which `?verbose` also shows on success.
Held by test/integration/test_runtime_manager.py, test/unit/test_runtime_handlers.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from dask_operator.runtime.serving import Response

# A check raises (or returns a message) on failure; returning None means healthy.
Check = Callable[[], "str | None"]


def ping() -> str | None:
    return None


class Checks:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()

    def add(self, name: str, check: Check) -> None:
        with self._lock:
            if name in self._checks:
                raise ValueError(f"a check named {name!r} is already registered")
            self._checks[name] = check

    def _run(self, name: str, check: Check) -> str | None:
        try:
            return check()
        except Exception as error:  # noqa: BLE001  (a failing check is an answer, not a crash)
            return str(error) or type(error).__name__

    def route(self, endpoint: str) -> Callable[[str, Mapping[str, list[str]]], Response]:
        """A serving.Route answering `endpoint`, `endpoint?verbose`, `endpoint?exclude=x`, `endpoint/<name>`."""

        def answer(path: str, query: Mapping[str, list[str]]) -> Response:
            with self._lock:
                checks = dict(self._checks) or {"ping": ping}
            single = path[len(endpoint) :].strip("/")
            if single:
                if single not in checks:
                    return 404, "text/plain; charset=utf-8", b"404 page not found\n"
                failure = self._run(single, checks[single])
                if failure is None:
                    return 200, "text/plain; charset=utf-8", b"ok"
                return 500, "text/plain; charset=utf-8", f"internal server error: {failure}\n".encode()
            excluded = set(query.get("exclude", []))
            lines = []
            failed = False
            for name, check in sorted(checks.items()):
                if name in excluded:
                    continue
                failure = self._run(name, check)
                if failure is None:
                    lines.append(f"[+]{name} ok")
                else:
                    failed = True
                    lines.append(f"[-]{name} failed: reason withheld")
            for name in sorted(excluded):
                lines.append(f"[+]{name} excluded: ok")
            if not failed and "verbose" not in query:
                return 200, "text/plain; charset=utf-8", b"ok"
            lines.append(f"{endpoint.strip('/')} check {'failed' if failed else 'passed'}")
            return (500 if failed else 200), "text/plain; charset=utf-8", ("\n".join(lines) + "\n").encode()

        return answer
