from emovec.cli import main

raise SystemExit(main())
