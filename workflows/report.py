"""`python -m workflows.report RUN_DIR`: the same as `gpt-stats report RUN_DIR`."""

import sys

from workflows.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
