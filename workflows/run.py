"""`python -m workflows.run CONFIG [--set key=value ...]`: the same as `gpt-stats run`, without installing the
package (what `ray job submit --working-dir . -- python -m workflows.run ...` needs)."""

import sys

from workflows.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
