"""``python -m idruid.cli``: the idruid command (as under ``accelerate launch -m idruid.cli``)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
