"""``python -m bulkcred``: the same as the ``bulkcred`` command."""

from .cli import main

main()
