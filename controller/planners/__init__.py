"""The pure planners, one per concern, as peers: observation + `now` -> Plan.

Invariant: no I/O, no clock, no randomness; each imports only `controller.contract` and `dask_operator.api`,
never another planner. Held by test/unit/test_layers.py and each planner's table tests.
"""
