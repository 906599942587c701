"""`python -m saescope ...` (also what `torchrun -m saescope train ...` runs)."""

from saescope.cli import main

raise SystemExit(main())
