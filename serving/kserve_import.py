"""Import KServe without letting it read our command line.

``kserve.model_server`` parses ``sys.argv`` at import time and exits on flags it reads
differently (``--protocol in-process``, say). CLIs that are not KServe servers import it once
through here, with their arguments hidden; later imports reuse the loaded module.
"""

from __future__ import annotations

import sys


def import_kserve() -> None:
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve  # noqa: F401
    finally:
        sys.argv = argv
