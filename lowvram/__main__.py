"""`python -m lowvram` and the `lowvram` command."""

import sys


def entry() -> None:
    try:
        from lowvram.cli import main
    except KeyboardInterrupt:  # Ctrl-C in the first moments, before main() takes it over: still one line
        print("lowvram: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    entry()
