"""``python -m rlhf.cli``: the same as the ``rlhf`` command."""

from rlhf.cli import main

main()
