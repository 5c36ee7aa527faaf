"""How hard the fuzz tests try: a small budget in `make test`, a large one from `make chaos`.

`EDGEFLEET_FUZZ_EXAMPLES` sets the Hypothesis examples per fuzz target (the chaos suite's fuzz
scenario sets it; `make test` leaves the default). The Hypothesis database is off, so no run
replays another's examples (`.hypothesis/`, which Hypothesis still creates, is git-ignored); a
failure prints the seed and the shrunk example to reproduce it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 60
FUZZ_EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))

fuzz_settings = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # a shared 2-core machine: time is not what these tests judge
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
