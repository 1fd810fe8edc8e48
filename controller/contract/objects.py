"""The planners' window onto `dask_operator.runtime.objects`: an object as a dict and Kubernetes' time format,
so planners name them without importing the runtime (which does I/O).

Invariant: re-exports only; nothing is defined here. Held by test/unit/test_plans.py.
"""

from __future__ import annotations

from dask_operator.runtime.objects import Obj, parse_rfc3339, rfc3339

__all__ = ["Obj", "parse_rfc3339", "rfc3339"]
