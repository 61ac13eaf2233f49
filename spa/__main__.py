"""`python -m spa` runs the command line (also what `torchrun -m spa` launches)."""

import sys

from spa.cli import main

sys.exit(main())
