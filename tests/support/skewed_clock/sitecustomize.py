"""Put this directory first on PYTHONPATH to shift one process's wall clock by FAKE_CLOCK_SKEW_S
seconds (time.time, time.time_ns), as on a host whose clock is off. time.monotonic is left alone:
it has no meaning across hosts anyway."""
import os
import time

_SKEW_S = float(os.environ.get("FAKE_CLOCK_SKEW_S", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _SKEW_S
time.time_ns = lambda: _time_ns() + int(_SKEW_S * 1e9)
