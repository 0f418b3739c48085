"""``python -m streamd`` is the same as the ``streamd`` console script."""

import sys

from streamd.cli import main

sys.exit(main())
