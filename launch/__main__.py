"""python -m launch: the same as the jaxrun script."""

import sys

from launch.run import main

sys.exit(main())
