import sys

from refcoco_edit.cli import main

sys.exit(main())
