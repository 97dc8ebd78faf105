import sys

from vggprune.cli import main

sys.exit(main())
