"""Records that stages hand each other through files, and the run-folder layouts.

One module per kind of output folder; everything that writes or reads one of these files
goes through here, so writer and reader cannot disagree about a name or a field.

- :mod:`unveil.records.run`: a counterfactual run (``counterfactual.json``, volumes,
  ``analysis/``).
"""

from unveil.records.run import (  # noqa: F401  (the public names of the package)
    RUN_JSON,
    RUN_KEYS,
    RunLayout,
    edit_slug,
    read_run,
)
