"""``RUN_DIR/report.md`` (and report.html) at the end of a run: one table per client and round
(scores, agreement, bytes, ε), the ε the ledger accounts, what each party saw, the privacy
mechanisms. Everything is read back from the run folder's files, so the report shows what was
written, not what was intended; the content lives in :mod:`privsem.reports.content`."""

from __future__ import annotations

from pathlib import Path

from privsem.config import RunConfig
from privsem.privacy.plan import PrivacyPlan
from privsem.reports.write import write_reports


def write_report(out: Path, cfg: RunConfig, plan: PrivacyPlan, *, seconds: float) -> Path:
    """Writes report.md and report.html into ``out`` (whose config.yaml was written from
    ``cfg``); returns the path of report.md."""
    md, _ = write_reports(out, plan=plan, seconds=seconds)
    return md
