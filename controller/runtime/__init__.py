"""A Dask-agnostic controller-runtime: client, cache, workqueue, controller, manager, leader election, metrics."""
