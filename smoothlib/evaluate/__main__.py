"""``python -m smoothlib.evaluate`` (and ``accelerate launch -m smoothlib.evaluate``): the ``smoothlib-eval`` command."""
from .cli import main

raise SystemExit(main())
