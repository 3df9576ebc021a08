import sys

from dge_explain.cli import main

sys.exit(main())
