"""`python -m saescope.cli ...` (same as `python -m saescope ...`)."""

from saescope.cli import main

raise SystemExit(main())
