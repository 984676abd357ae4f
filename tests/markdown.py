"""Markdown pipe tables read back by header, for tests that check tables the project writes."""

import re
from typing import Dict, List


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(markdown: str) -> List[List[Dict[str, str]]]:
    """Every pipe table of a markdown text, as rows of {header: cell}."""
    found, lines = [], markdown.splitlines()
    i = 0
    while i + 1 < len(lines):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            header = _cells(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]))))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found
