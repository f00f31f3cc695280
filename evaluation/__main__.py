"""``python -m evaluation ...``: see `evaluation.runner`."""

from evaluation.runner import main

if __name__ == "__main__":
    main()
