"""`python -m lowvram` and the `lowvram` command."""

import builtins
import os
import signal
import sys


def signals_as_ctrl_c(command: str | None = None) -> None:
    """SIGTERM as Ctrl-C throughout, where a command's own handling is not (its last words, its return): a second
    one was a bare 143. And Ctrl-C itself where it came ignored, in `train` (whose imports and steps take it over
    anyway: it was lost between them) and in a process leading its own session, which no terminal's Ctrl-C reaches,
    only a signal sent to it: the UI's runs (their Stop), started so by a UI that `nohup lowvram ui &` left ignoring
    it (the Stop in a run's first seconds was lost, the run went on). Another command started as a shell's
    background job (a script's `lowvram ui &`) keeps it ignored, as the shell meant."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and (
            command == "train" or hasattr(os, "getsid") and os.getsid(0) == os.getpid()):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def entry() -> None:
    for stream in (sys.stdout, sys.stderr):
        # a console or file in a legacy code page (Windows' cp1252 where output is redirected) cannot hold every
        # name a user gives (CJK, emoji): those characters are written escaped rather than ending the command
        if (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "") != "utf8":
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure:
                reconfigure(errors="backslashreplace")
    # (IPython's `%run -m lowvram` runs it in the kernel, which lives on: its signals are left as they are)
    own_process = hasattr(signal, "SIGTERM") and not getattr(builtins, "__IPYTHON__", False)
    if own_process:
        signals_as_ctrl_c(next((word for word in sys.argv[1:] if not word.startswith("-")), None))
    try:
        from lowvram.cli import main

        code = main()
    except KeyboardInterrupt:  # Ctrl-C in the first moments, before main() takes it over, or in its last: one line
        print("lowvram: interrupted", file=sys.stderr)
        code = 130
    if own_process:  # ending now (a second of torch's teardown): another changes nothing
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
