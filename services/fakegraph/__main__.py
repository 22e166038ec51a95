"""`python -m services.fakegraph --help`."""

from services.fakegraph.server import main

raise SystemExit(main())
