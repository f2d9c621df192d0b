"""``python -m podyn_py``: the same as the ``podyn`` command."""

from podyn_py.cli import main

main()
