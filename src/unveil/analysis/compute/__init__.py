"""The computing half of ``unveil analyze``: pure functions, arrays and records in, records out.

Nothing here reads or writes a file: :mod:`unveil.analysis.measure` reduces the volumes
of a run to arrays of regional means, these modules turn the arrays into the statistics
rows and the verdict (:mod:`unveil.records`), and :mod:`unveil.analysis.analyze` writes
them.  ``docs/statistics.md`` explains every number.

- :mod:`~unveil.analysis.compute.effects`: the per-contrast tests against zero, the noise
  floor, the training cohort's sampling error, the specificity;
- :mod:`~unveil.analysis.compute.calibration`: the empirical calibration on the negative
  controls;
- :mod:`~unveil.analysis.compute.association`: the raw and the adjusted association in the
  real cohort;
- :mod:`~unveil.analysis.compute.recovery`: planted against recovered effects;
- :mod:`~unveil.analysis.compute.verdict`: the verdict and the cautions;
- :mod:`~unveil.analysis.compute.results`: all of it, from the measured arrays to
  :class:`~unveil.records.results.Results`.
"""

from __future__ import annotations

import numpy as np


def row_rng(seed: int, *key: int) -> np.random.Generator:
    """The bootstrap stream of one output row.

    One independent stream per row, so a row's interval does not depend on how many rows
    came before it (adding a region leaves the others' intervals unchanged).
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))
