import sys

from auxssl.cli import main

sys.exit(main())
