import sys

from vlm.train.cli import main

sys.exit(main())
