"""A Dask-agnostic controller-runtime: client, cache, workqueue, controller, manager, leader election, metrics.

Modules, one concept each: kinds (REST paths), client (REST + SSA + retries), store/informer/reflector/cache
(the watch-fed cache), workqueue/ratelimiter/backoff, predicate/handler/reconcile/controller/builder,
manager/leaderelection/health/serving/metrics/logs, events (Kubernetes Events), applier (write-skipping SSA).
"""
