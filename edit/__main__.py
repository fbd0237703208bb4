"""`python -m edit amplify|guide|identity ...` (see edit/cli.py)."""
import sys

from edit.cli import main

sys.exit(main())
