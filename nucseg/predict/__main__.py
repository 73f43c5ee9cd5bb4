"""``python -m nucseg.predict``: see ``nucseg.predict.cli``."""

from nucseg.predict.cli import main

raise SystemExit(main())
