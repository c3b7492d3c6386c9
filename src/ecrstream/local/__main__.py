"""``python -m ecrstream.local``: serve a local ECR endpoint (see ``serve.py``)."""

import sys

from ecrstream.local.serve import main

sys.exit(main(prog="python -m ecrstream.local"))
