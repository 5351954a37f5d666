"""`python -m topgun` runs the `topgun` command."""

from topgun.cli import main

main()
