"""``python -m seenn`` runs the ``seenn`` command line."""

from seenn._cli import main

raise SystemExit(main())
