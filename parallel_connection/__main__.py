"""``python -m parallel_connection``: the command line."""

from .cli import main

raise SystemExit(main())
