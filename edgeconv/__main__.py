"""`python -m edgeconv` (and `torchrun -m edgeconv`): the same command line as the `edgeconv` script."""

from edgeconv.cli import main

if __name__ == "__main__":
    main()
