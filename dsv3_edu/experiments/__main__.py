"""``python -m dsv3_edu.experiments NAME ...``: see :mod:`dsv3_edu.experiments.runner`."""

import sys

from .runner import main

sys.exit(main())
