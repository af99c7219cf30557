"""`python -m trainer run BUNDLE_URI [--stage S] [--run-id ID]`: the CUDA image's entrypoint."""

import sys

from trainer.pipeline import main

sys.exit(main())
