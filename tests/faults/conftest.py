"""Prints the fault-injection summary table after the session and writes tests/faults/SUMMARY.md."""

import datetime
from pathlib import Path

from tests.faults import fault_summary

SUMMARY_FILE = Path(__file__).with_name("SUMMARY.md")


def pytest_terminal_summary(terminalreporter):
    if not fault_summary.ENTRIES:
        return
    table = fault_summary.summary_markdown()
    terminalreporter.write_sep("=", "fault-injection summary")
    terminalreporter.write_line(table)
    terminalreporter.write_line(fault_summary.totals_line())
    if {e.kind for e in fault_summary.ENTRIES} != set(fault_summary.KINDS):
        return  # a partial run: keep the full suite's SUMMARY.md
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    SUMMARY_FILE.write_text(
        "# Fault-injection summary\n\n"
        f"Written by `python -m pytest tests/faults tests/cluster -m faults` ({stamp}); cases that did not run "
        "are absent.\n\n" + table + "\n" + fault_summary.totals_line() + "\n"
    )
