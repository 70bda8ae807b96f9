"""``python -m fastq``: the same as the ``fastq`` console script (fastq.cli:main)."""

import sys

from fastq.cli import main

sys.exit(main())
