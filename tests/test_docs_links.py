"""Every relative link in README.md and docs/*.md points at a file (and heading) that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def slugs(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 ...
    for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(_prose(text)):
        s = re.sub(r"[^\w\- ]", "", h.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: Path) -> list[str]:
    # a code span is not a link, but link text may be one: [`x.py`](x.py)
    text = CODE.sub("code", _prose(path.read_text()))
    found = LINK.findall(text)
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:, ...


def test_slugs_follow_github():
    assert slugs("## `make demo`\n## Does augmentation help?\n## A, b (c)\n## A, b (c)\n") == {
        "make-demo", "does-augmentation-help", "a-b-c", "a-b-c-1"}


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.is_relative_to(root):
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(root)}")
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return broken


def test_broken_links_are_found(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n## Two words\n")
    a = tmp_path / "a.md"
    a.write_text("[ok](b.md#two-words) [gone](c.md) [bad](b.md#three) [out](../x.md) "
                 "[web](https://example.com) `[code](nope.md)`\n```\n[fenced](nope.md)\n```\n")
    assert broken_links(a, tmp_path) == ["c.md: no file c.md", "b.md#three: no heading #three "
                                         "in b.md", "../x.md: outside the repository"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = broken_links(doc)
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_docs_are_linked_from_the_readme():
    readme = links(ROOT / "README.md")
    for doc in DOCS[1:]:
        assert any(t.split("#")[0] == f"docs/{doc.name}" for t in readme), doc.name
