"""`python -m dask_operator.controller` is the `dask-operator` command."""

from dask_operator.controller.cli import main

raise SystemExit(main())
