"""The user documents (README.md, docs/*.md) stand on their own: no path outside the
repository, and every relative link names a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
OUTSIDE = ("../shared", "/work/")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # ](target) or ](target "title")


def relative_links(text: str) -> list[str]:
    """The targets of the document's markdown links that point into the repository, without
    their anchors (a pure anchor, a URL or a mail address is not a file)."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_documents_are_found() -> None:
    assert len(DOCUMENTS) > 1 and all(doc.is_file() for doc in DOCUMENTS)


def test_links_are_parsed_without_anchors_and_urls() -> None:
    text = '[a](docs/api.md#errors) [b](#here) [c](https://x.org/a.md) [d](../Dockerfile "t")'
    assert relative_links(text) == ["docs/api.md", "../Dockerfile"]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda doc: doc.relative_to(REPO_ROOT).as_posix())
def test_no_path_outside_the_repository(doc: Path) -> None:
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for outside in OUTSIDE:
            assert outside not in line, f"{doc.name}:{number} names {outside!r}: {line.strip()}"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda doc: doc.relative_to(REPO_ROOT).as_posix())
def test_relative_links_name_existing_files(doc: Path) -> None:
    missing = [
        target
        for target in relative_links(doc.read_text(encoding="utf-8"))
        if not (doc.parent / target).exists()
    ]
    assert not missing, f"{doc.relative_to(REPO_ROOT)} links to missing files: {missing}"


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    readme = (REPO_ROOT / "README.md").read_text().split("## Tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\s+#", readme, re.S).group(1)
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
