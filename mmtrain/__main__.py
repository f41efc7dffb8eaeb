"""`python -m mmtrain ...`: the command line, as the `mmtrain` script runs it."""

import sys

from mmtrain.jobs.cli import main

sys.exit(main())
