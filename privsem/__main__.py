import sys

from privsem.cli import main

sys.exit(main())
