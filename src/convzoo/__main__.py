from convzoo.cli import main

raise SystemExit(main())
