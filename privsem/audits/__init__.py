"""Privacy audits: membership inference, canaries with the one-run ε lower bound, and embedding
inversion (DESIGN.md §6; TESTING.md T34, T43, T44).

Library pieces that take models, texts and arrays; run folders and command-line scripts wire
them together. Modules:

- :mod:`~privsem.audits.metrics`: ROC curve, AUC, TPR at low FPR, log-log ROC plot.
- :mod:`~privsem.audits.one_run`: the one-run empirical ε lower bound (Steinke, Nasr and
  Jagielski 2023).
- :mod:`~privsem.audits.canaries`: canary generation, the auditor's secret split, Secret Sharer
  exposure, verbatim-leak check.
- :mod:`~privsem.audits.mia`: loss, zlib and reference-model scores of a causal LM.
- :mod:`~privsem.audits.inversion`: nearest-neighbour and trained inversion of noised uploads.

Run-folder audits (what ``privsem audit ...`` and the scripts in ``audits/`` run), each writing
JSON and plots under ``RUN_DIR/audit/`` and a section of the report:

- :mod:`~privsem.audits.planting`: canaries planted in one client's data at set-up
  (``audit.canaries``), the auditor's ``audit/canaries.json``.
- :mod:`~privsem.audits.folder`: a run folder as the audits read it (client models after a
  round, the ledger's ε up to a round).
- :mod:`~privsem.audits.canary_audit`, :mod:`~privsem.audits.mia_audit`,
  :mod:`~privsem.audits.inversion_audit`.

Only the model-free modules are re-exported here; import the others by name.
Every result type has ``to_json()`` returning plain Python types.
"""

from privsem.audits.canaries import (
    Canary,
    CanaryFormat,
    Exposure,
    VerbatimReport,
    chance_exposure,
    find_verbatim,
    plant_canaries,
    secret_sharer_exposure,
)
from privsem.audits.metrics import (
    AttackSummary,
    RocCurve,
    TprAtFpr,
    auc,
    plot_roc_loglog,
    roc_curve,
    summarize_attack,
    tpr_at_fpr,
)
from privsem.audits.one_run import (
    OneRunAudit,
    epsilon_lower_bound,
    one_run_audit,
    one_run_audit_grid,
    p_value,
)

__all__ = [
    "AttackSummary",
    "Canary",
    "CanaryFormat",
    "Exposure",
    "OneRunAudit",
    "RocCurve",
    "TprAtFpr",
    "VerbatimReport",
    "auc",
    "chance_exposure",
    "epsilon_lower_bound",
    "find_verbatim",
    "one_run_audit",
    "one_run_audit_grid",
    "p_value",
    "plant_canaries",
    "plot_roc_loglog",
    "roc_curve",
    "secret_sharer_exposure",
    "summarize_attack",
    "tpr_at_fpr",
]
