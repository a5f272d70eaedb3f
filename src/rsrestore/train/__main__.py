"""``python -m rsrestore.train CONFIG.yaml`` and ``torchrun --nproc_per_node N -m rsrestore.train CONFIG.yaml``."""

import sys

from .command import main

sys.exit(main())
