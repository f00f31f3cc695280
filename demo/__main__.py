"""`python -m demo [key=value ...]` (what `make demo` runs): see demo/run.py."""

from demo.run import main

main()
