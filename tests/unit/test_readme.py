"""The README's Python example runs as written, and the docs stand on their own.

A user who clones the repository gets README.md and docs/ and nothing beside them: every
markdown link must resolve to a file (and heading) inside the repository, and no text may
point into the team's workspace or at an absolute path of a development machine.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").rglob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # [text], which may hold [brackets] or `code`
    r"\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"  # (target "optional title")
)
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", flags=re.M)
_WEB = ("http://", "https://", "mailto:")


def test_readme_engine_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    model = namespace["model"]
    assert model.n_records_ == 1797 - 25 + 5
    assert namespace["ridge"].n_records_ == 1797 - 100


def _prose(text: str) -> str:
    """The text without fenced code blocks (code may contain ``[x](y)`` that is no link)."""
    return _FENCE.sub("", text)


def _links(text: str) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "code", _prose(text))  # `[x](y)` in code is no link
    return _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(path.read_text()), flags=re.M)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in headings:
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _problem(doc: Path, target: str) -> str | None:
    """Why ``target``, a link in ``doc``, does not stay inside the repository (or None)."""
    if target.startswith(_WEB):
        return None  # a citation on the web, not a file the clone lacks
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):
        return "links with a scheme other than http(s)/mailto point outside the repository"
    path_part, _, anchor = target.partition("#")
    if path_part.startswith("/"):
        return "absolute path: a clone does not have it"
    resolved = (doc.parent / path_part).resolve() if path_part else doc
    if not resolved.is_relative_to(ROOT):
        return f"resolves to {resolved}, outside the repository"
    if not resolved.exists():
        return f"{resolved.relative_to(ROOT)} does not exist"
    if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
        return f"{resolved.relative_to(ROOT)} has no heading with anchor #{anchor}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_stays_inside_the_repository(doc: Path) -> None:
    problems = [
        f"{target}: {why}"
        for target in _links(doc.read_text())
        if (why := _problem(doc, target)) is not None
    ]
    assert not problems, f"{doc.relative_to(ROOT)} links outside the repository:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_text_points_into_the_workspace(doc: Path) -> None:
    """Paths beside the clone are not part of it. The one exception is the documented
    default of ``UNLEARN_DATASETS``, ``../shared/datasets``, a setting and not a link."""
    found = []
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        for match in re.finditer(r"\.\./shared/[\w./-]*|/work/[\w./-]*", line):
            if not match.group().startswith("../shared/datasets"):
                found.append(f"line {n}: {match.group()}")
    assert not found, f"{doc.relative_to(ROOT)} points outside the repository:\n" + "\n".join(found)


def test_the_link_check_catches_what_it_should() -> None:
    doc = ROOT / "docs" / "architecture.md"
    assert _problem(doc, "../../shared/DESIGN.md") is not None
    assert _problem(doc, "/work/shared/DESIGN.md") is not None
    assert _problem(doc, "file:///etc/passwd") is not None
    assert _problem(doc, "missing.md") is not None
    assert _problem(doc, "redis-keys.md#no-such-heading") is not None
    assert _problem(doc, "redis-keys.md#who-reads-what-the-two-acl-users") is None
    assert _problem(README, "docs/architecture.md") is None
    assert _problem(README, "#status") is None
    text = "[a](x.md) [`b`](y.md) `[c](no.md)`\n```\n[d](no.md)\n```\n[e]: w.md\n"
    assert _links(text) == ["x.md", "y.md", "w.md"]
