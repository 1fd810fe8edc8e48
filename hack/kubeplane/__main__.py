"""`python -m kubeplane ...` is `hack/localkube ...`."""

import sys

from kubeplane.cli import main

sys.exit(main())
