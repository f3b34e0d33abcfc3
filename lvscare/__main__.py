from lvscare.cli import main

raise SystemExit(main())
