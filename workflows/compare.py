"""`python -m workflows.compare RUN_A RUN_B [...] [--out PAGE.html]`: the same as `gpt-stats compare`."""

import sys

from workflows.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
