"""`python -m lowvram` and the `lowvram` command."""

import sys


def entry() -> None:
    for stream in (sys.stdout, sys.stderr):
        # a console or file in a legacy code page (Windows' cp1252 where output is redirected) cannot hold every
        # name a user gives (CJK, emoji): those characters are written escaped rather than ending the command
        if (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "") != "utf8":
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure:
                reconfigure(errors="backslashreplace")
    try:
        from lowvram.cli import main
    except KeyboardInterrupt:  # Ctrl-C in the first moments, before main() takes it over: still one line
        print("lowvram: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    entry()
