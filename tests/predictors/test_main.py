"""``python -m predictors``: the start-up clock the ``import`` phase of ``kzero_cold_start_seconds`` is read from."""

from __future__ import annotations

import subprocess
import sys
import time


def test_the_start_up_clock_counts_from_the_process_start_not_from_a_rounded_boot_time() -> None:
    code = "from predictors.__main__ import _seconds_since_process_start as s; print(s())"
    spawned = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lived = time.monotonic() - spawned
    # The child cannot have lived longer than the parent saw it (plus one clock tick); a boot time
    # rounded to whole seconds (psutil's create_time) made it look up to a second older.
    assert 0 < float(done.stdout) <= lived + 0.01
