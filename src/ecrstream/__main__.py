"""``python -m ecrstream``: the command line."""

from ecrstream.cli import main

raise SystemExit(main())
