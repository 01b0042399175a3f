"""Reports: the run folder's report.md, read first by a person (a privacy officer, a researcher)."""
