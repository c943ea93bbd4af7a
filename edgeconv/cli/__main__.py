"""`python -m edgeconv`, kept for scripts written before `python -m edgeconv`."""

from edgeconv.cli import main

if __name__ == "__main__":
    main()
