"""`python -m meshgate ...`: the same CLI as the `meshgate` console script."""

import sys

from meshgate.cli import main

sys.exit(main())
