from par_client.cli import main

raise SystemExit(main())
