"""``python -m relay --upstream URL``: an edge, from relay alone."""

from relay.server.main import main

raise SystemExit(main())
