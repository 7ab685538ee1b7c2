"""`python -m server` runs the `lopso` command."""

import sys

from server.cli import main

sys.exit(main())
