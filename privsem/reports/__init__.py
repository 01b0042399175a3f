"""Reports: the run folder's report.md and report.html, read first by a person (a privacy
officer, a researcher).

``model`` reads a run folder into typed data and checks it against the ledger; ``content`` turns
that into blocks; ``document`` renders blocks as Markdown or one self-contained HTML page;
``plots`` draws the figures; ``write`` ties them together (``privsem report RUN_DIR``).
"""
