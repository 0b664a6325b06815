"""``python -m ens.cli``: the same as the ``ens`` console script."""

from ens.cli import main

main()
