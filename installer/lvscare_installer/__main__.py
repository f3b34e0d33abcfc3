import sys

from lvscare_installer.cli import main

sys.exit(main())
