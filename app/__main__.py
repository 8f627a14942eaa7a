"""`python -m app ...`: the same commands as the `app` script (used for child processes)."""

from app.cli import main

main()
