from fspd.cli import main

raise SystemExit(main())
