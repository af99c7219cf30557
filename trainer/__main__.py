"""The CUDA image's entry points: `python -m trainer run|eval BUNDLE_URI …`, and on each node of a
SkyPilot job `python -m trainer launch run|eval|pipeline BUNDLE` (trainer/launch.py)."""

import sys

from trainer.pipeline import main

sys.exit(main())
