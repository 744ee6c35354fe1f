"""The property-based tier: hypothesis generates hostile (and valid) inputs for every user-facing command.

Profiles (HYPOTHESIS_PROFILE overrides): `ci` when CI is set (modest example counts: the whole tier stays well under
90 s on 2 cores), `dev` otherwise, `thorough` for a long hunt. No example database is kept: failures print the
example and its @reproduce_failure blob instead (hypothesis still caches Unicode tables and literals in the gitignored
.hypothesis/).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = settings(deadline=None, database=None, print_blob=True,
                   suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large))
settings.register_profile("ci", _COMMON, max_examples=60, derandomize=True)
settings.register_profile("dev", _COMMON, max_examples=150)
settings.register_profile("thorough", _COMMON, max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
