"""``python -m ptq4vm_fx.cli`` (and ``torchrun ... -m ptq4vm_fx.cli eval``): the ``ptq4vm`` command."""

import sys

from . import main

sys.exit(main())
