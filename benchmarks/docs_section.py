"""Writing a benchmark's section of docs/performance.md, between its markers.

A section is `<!-- NAME:start -->` … `<!-- NAME:end -->`; a hand-written reading after
`<!-- NAME:notes -->` survives reruns.
"""

import re
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def markers(name: str) -> tuple[str, str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->", f"<!-- {name}:notes -->"


def write_section(name: str, section: str) -> None:
    """Replace (or append) the section `name` of docs/performance.md with `section`."""
    start, end, notes_marker = markers(name)
    text = REPORT.read_text() if REPORT.exists() else "# Performance\n"
    if start in text and end in text:
        old = text[text.index(start) : text.index(end) + len(end)]
        notes = re.search(re.escape(notes_marker) + r"\n(.*?)(?=" + re.escape(end) + ")", old, re.S)
        if notes and notes_marker in section:
            section = section.replace(notes_marker, notes.group(0).rstrip("\n"))
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    REPORT.write_text(text)


def publish(name: str, lines: list[str], *, write: bool) -> None:
    """End a benchmark's report (its notes marker, its end marker), print it, and write
    it into docs/performance.md when `write`."""
    _, end, notes = markers(name)
    section = "\n".join([*lines, "", notes, end])
    print(section)
    if write:
        write_section(name, section)
