from brushtaild.daemon.main import main

raise SystemExit(main())
