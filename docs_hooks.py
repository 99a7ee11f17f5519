"""MkDocs hooks (mkdocs.yml `hooks:`): links from docs/ to the rest of the repository.

The pages link to examples and sources with relative paths (`../examples/rest_client.py`),
which work on GitHub. The site holds only docs/, so those links are rewritten to the
repository's files at `repo_url`. A link to a path that does not exist stays as it is,
and the strict build reports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
_OUTSIDE = re.compile(r"\]\(\.\./(?P<path>[^)#\s]+)(?P<anchor>#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Point links that leave docs/ at the repository (top-level pages only)."""
    if "/" in page.file.src_uri:
        return markdown  # pages in subfolders (the reference) link within the site
    base = str(config["repo_url"]).rstrip("/")

    def outside(match: re.Match[str]) -> str:
        path = match["path"]
        if not (ROOT / path).exists():
            return match.group(0)
        kind = "tree" if (ROOT / path).is_dir() else "blob"
        return f"]({base}/{kind}/main/{path}{match['anchor'] or ''})"

    return _OUTSIDE.sub(outside, markdown)
