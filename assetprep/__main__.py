"""`python -m assetprep` and the `assetprep` command.

Ctrl-C and SIGTERM are handled from the first line: an interrupt while the CLI's libraries are still importing
(nothing has started, nothing to clean up) is the same one line and exit code as later, not a traceback.
"""

from __future__ import annotations

import signal
import sys


def _early(signum: int, frame: object) -> None:
    from .errors import INTERRUPTED  # already imported with the package: no cost here

    sys.stderr.write(INTERRUPTED + "\n")
    raise SystemExit(128 + signum)


def run() -> None:
    signal.signal(signal.SIGINT, _early)
    signal.signal(signal.SIGTERM, _early)
    from .cli import main  # installs the handlers that clean up once work can start

    main()


if __name__ == "__main__":
    run()
