"""Writes ``RUN_DIR/report.md`` and the self-contained ``RUN_DIR/report.html`` from the run
folder's files (see :mod:`privsem.reports.model`), with the audit section when ``RUN_DIR/audit/``
holds canaries or audit results (:mod:`privsem.reports.audit`). Both files are written only after the whole
run folder has been read and checked, so a damaged ledger leaves no half-made report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from privsem.reports.audit import blocks as audit_blocks
from privsem.reports.audit import load_audits
from privsem.reports.content import build, footer
from privsem.reports.document import to_html, to_markdown
from privsem.reports.model import load_run
from privsem.reports.plots import render_all

if TYPE_CHECKING:
    from privsem.privacy.plan import PrivacyPlan


def write_reports(run_dir: str | Path, *, plan: PrivacyPlan | None = None,
                  seconds: float | None = None) -> tuple[Path, Path]:
    """Returns the paths of report.md and report.html. Raises DataError or LedgerCorrupted
    (from :func:`~privsem.reports.model.load_run`) before writing anything."""
    data = load_run(run_dir, plan=plan, seconds=seconds)
    audits = load_audits(data.run_dir)
    figures = {**render_all(data), **audits.figures}
    blocks = [*build(data, figures.keys()), *audit_blocks(audits)]
    md = to_markdown(blocks)
    page = to_html(blocks, title=f"privsem run {data.cfg.name}", figures=figures,
                   footer=footer(data))
    md_path, html_path = data.run_dir / "report.md", data.run_dir / "report.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path
