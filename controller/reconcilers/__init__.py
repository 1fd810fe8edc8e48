"""One reconciler per kind, each a declaration on the template of `controller.reconciler`: what it watches
(setup_with_manager), what it observes from the cache, which planner it calls and what it records.

Invariant: no reconciler re-implements the loop or waits for a scheduler. Held by
test/unit/test_reconciler.py.
"""
