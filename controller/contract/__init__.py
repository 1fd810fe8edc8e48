"""What the planners share, and nothing that does I/O: the plan vocabulary (plans), an object as a dict
(objects), conditions and Events, children's identity (children), pod states (pods), holds, losses, the
drain hook, the operator's names (names) and what it agrees on with a scheduler (scheduler_api).

Invariant: pure values and functions over plain data; imports only `dask_operator.api` and its own modules.
Held by test/unit/test_layers.py.
"""
