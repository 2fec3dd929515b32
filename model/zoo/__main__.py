"""`python -m model.zoo ...`: see model/zoo/cli.py."""

import sys

from model.zoo.cli import main

sys.exit(main())
