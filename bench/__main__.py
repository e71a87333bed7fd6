"""``python -m bench``: see bench/runner.py and docs/benchmarks.md."""

import os
import sys

# The benchmark imports the product's modules, which read Django settings.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
