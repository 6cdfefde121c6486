"""``python -m tunesmith.cli``: what torchrun and accelerate launch in each process."""

import sys

from .main import main

sys.exit(main())
