"""``python -m train.evaluate ...``: the evaluation entry point, kept under its old name.

The code lives in the `evaluation` package (`evaluation.runner.main`); this module only forwards.
"""

from evaluation.runner import main

if __name__ == "__main__":
    main()
