"""`python -m eval --checkpoint CKPT --shards shards/test` (see eval/cli.py)."""
from common.exit import exit_process
from eval.cli import main

exit_process(main())
