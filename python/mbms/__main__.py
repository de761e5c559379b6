from mbms.cli import main

raise SystemExit(main())
