"""The kubernetes.dask.org/v1 contract: types, defaults, validation and CRD schema generation.

Import as `dask_operator.api`; this folder is never a top-level package of its own.
"""
