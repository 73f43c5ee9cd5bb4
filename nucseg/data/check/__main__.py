"""``python -m nucseg.data.check ROOT``: see :mod:`nucseg.data.check.cli`."""

from nucseg.data.check.cli import main

raise SystemExit(main())
