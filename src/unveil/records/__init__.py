"""Records that stages hand each other through files, and the run-folder layouts.

One module per kind of output folder; everything that writes or reads one of these files
goes through here, so writer and reader cannot disagree about a name or a field.  Records
are pydantic models: a reader uses attributes, never ``.get`` chains, and a file that does
not validate is one sentence (the file, the field, the fix).

- :mod:`unveil.records.run`: a counterfactual run (``counterfactual.json``,
  ``counterfactual.plan.json``, the volumes, where ``analysis/`` lies);
- :mod:`unveil.records.rows`: the statistics rows of ``analysis/`` (one model per table);
- :mod:`unveil.records.results`: ``analysis/results.json`` and the writing and reading of
  the whole ``analysis/`` folder;
- :mod:`unveil.records.fields`: the cell types, the base model and the error sentence
  they share.

Which records accept fields they do not know: the run record and plan (a newer unveil may
add one; regenerating the run to drop it would cost a whole generation), not the analysis
(rerunning ``unveil analyze`` takes seconds, and a reader must not render numbers whose
meaning it cannot be sure of).
"""

from unveil.records.results import (  # noqa: F401  (the public names of the package)
    TABLES,
    AnalysisSettings,
    Calibration,
    RecoveryCheck,
    RecoveryVerdict,
    Results,
    Verdict,
    VerdictEdit,
    as_results,
    read_results,
    read_table_csv,
    table_csv_text,
    write_analysis,
)
from unveil.records.rows import (  # noqa: F401
    AdjustedRow,
    CohortRow,
    NoiseFloorRow,
    ObservedRow,
    RecoveryRow,
    SpecificityRow,
    SubjectRegionRow,
)
from unveil.records.run import (  # noqa: F401
    PLAN_JSON,
    RUN_JSON,
    RUN_KEYS,
    FileIdentity,
    RunLayout,
    RunPlan,
    RunRecord,
    edit_slug,
    read_run,
    read_run_plan,
    read_run_record,
    write_run_plan,
    write_run_record,
)
