"""The generated sections of docs/benchmarks.md: a bench rewrites only what is between its markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(section: str, begin: str, end: str, text: str, doc_path: Path = DOC) -> None:
    """Replace what is between `begin` and `end` (append `section` with them if they are missing)."""
    doc = doc_path.read_text()
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}"
    else:
        doc = f"{doc.rstrip()}\n\n{section}\n\n{begin}\n{text}\n{end}\n"
    doc_path.write_text(doc)
