"""The dask-operator process: reconcilers for the kubernetes.dask.org/v1 kinds on a small controller-runtime."""
