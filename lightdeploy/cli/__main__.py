"""``python -m lightdeploy.cli``: the same command line as the ``lightdeploy`` script."""

from lightdeploy.cli import main

main()
