"""Check the relative links in README.md and docs/*.md.

MkDocs checks the links between the pages in docs/ (mkdocs.yml, strict), but not README.md, which
lives outside docs/ and is what GitHub shows first. This script checks both: every relative link
must point to an existing file, and a `#anchor` into a Markdown file must name one of its headings
(GitHub-style slugs: lowercase, spaces to '-', punctuation other than '-' and '_' dropped, '-1',
'-2', ... for repeated headings). Links inside code are ignored.

Usage: python docs/check_links.py    (exit 1 naming file, link and problem; silent exit 0 when all
resolve)
"""

import re
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str, keep_code: bool = False):
    """Yield (line number, line) outside fenced code blocks; inline code removed unless keep_code."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line if keep_code else CODE_SPAN.sub("", line)


def slug(heading: str) -> str:
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8"), keep_code=True):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    # anchors set by hand: <a id="..."> or <a name="...">
    found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return found


def problems(source: Path):
    for number, line in prose_lines(source.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                continue
            where = f"{source.relative_to(ROOT)}:{number}: link {target!r}"
            path_part, _, anchor = target.partition("#")
            dest = (source.parent / unquote(path_part)).resolve() if path_part else source
            if path_part.startswith("/"):
                yield f"{where}: absolute path; use a path relative to the file"
            elif not dest.exists():
                yield f"{where}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
                yield f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}"


def main() -> int:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [problem for source in files for problem in problems(source)]
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
