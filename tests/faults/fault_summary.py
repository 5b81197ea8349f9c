"""Tally of the fault-injection suite: faults injected/survived, inputs tried/rejected cleanly,
trial runs expected/found once (lost and duplicated in the detail), metrics logged/found, secrets
searched/clean. Tests in tests/faults and tests/cluster call `record`/`record_counts`;
tests/faults/conftest.py prints the table at the end of the session and, when every kind has
entries (`python -m pytest tests/faults tests/cluster -m faults`), writes tests/faults/SUMMARY.md."""

from dataclasses import dataclass

KINDS = {  # kind → (what, first count, second count)
    "faults": ("faults", "injected", "survived"),
    "inputs": ("bad inputs", "tried", "rejected cleanly"),
    "runs": ("trial runs", "expected", "found once"),
    "metrics": ("metrics", "logged", "found"),
    "leaks": ("configured secrets", "places searched", "clean"),
}


@dataclass
class Entry:
    kind: str
    case: str
    total: int
    good: int
    detail: str


ENTRIES: list[Entry] = []


def record(kind: str, case: str, ok: bool, detail: str = "") -> None:
    """One fault injected (survived?) or one bad input tried (rejected cleanly?)."""
    record_counts(kind, case, 1, int(bool(ok)), detail)


def record_counts(kind: str, case: str, total: int, good: int, detail: str = "") -> None:
    """Counts for one case, e.g. metrics logged vs found after an outage."""
    assert kind in KINDS, kind
    ENTRIES.append(Entry(kind, case, int(total), int(good), " ".join(str(detail).split())[:160]))


def summary_markdown() -> str:
    lines = ["| what | case | " + " | ".join(["count", "ok"]) + " | detail |", "|---|---|---|---|---|"]
    totals = []
    for kind, (what, first, second) in KINDS.items():
        entries = [e for e in ENTRIES if e.kind == kind]
        if not entries:
            continue
        for e in entries:
            lines.append(f"| {what} | {e.case} | {e.total} {first} | {e.good} {second} | {e.detail} |")
        totals.append(f"| **{what}** | **all** | **{sum(e.total for e in entries)} {first}** | "
                      f"**{sum(e.good for e in entries)} {second}** | |")
    return "\n".join(lines + totals) + "\n"


def totals_line() -> str:
    parts = []
    for kind, (what, first, second) in KINDS.items():
        entries = [e for e in ENTRIES if e.kind == kind]
        if entries:
            parts.append(f"{what}: {sum(e.total for e in entries)} {first} / "
                         f"{sum(e.good for e in entries)} {second}")
    return "; ".join(parts)
