"""`python -m trainer run BUNDLE_URI [--stage S] [--run-id ID]`: the CUDA image's entrypoint."""

import sys

from trainer.run import main

sys.exit(main())
