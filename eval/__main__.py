"""`python -m eval --checkpoint CKPT --shards shards/test` (see eval/cli.py)."""
import sys

from eval.cli import main

sys.exit(main())
