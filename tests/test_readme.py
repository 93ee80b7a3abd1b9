"""The README and docs/results.md stay true: the README's two set-up commands (CI runs exactly
the test command), its size, and the generated parts of both documents (they are what the
committed JSON says). The tour's commands are run by tests/test_tour.py."""

import re
from pathlib import Path

import pytest

from icalign.viz import readme

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"
DOCS = {"README.md": README, "docs/results.md": RESULTS}


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", README.read_text())


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_command():
    setup = [c for c in readme_commands() if c.startswith("python3 -m venv")]
    assert len(setup) == 2
    assert "icalign run gd-baseline" in setup[0] and "pytest" in setup[1]
    assert setup[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_is_a_tour_not_a_results_dump():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "https://arxiv.org/abs/2405.18634" in text
    assert text.index("## Set-up") < text.index("## A 60-second tour") < text.index("## Results") < text.index(
        "## Layout")


@pytest.mark.parametrize("doc", list(DOCS))
def test_no_issue_numbers(doc):
    assert not re.search(r"\bissues? \d+", DOCS[doc].read_text(), re.I)


@pytest.mark.parametrize("doc", list(DOCS))
def test_every_linked_figure_and_section_exists(doc):
    """Each image or link to a repository file resolves, and each link into docs/results.md
    names one of its headings (GitHub's anchor of it)."""
    path = DOCS[doc]
    text = path.read_text()
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", RESULTS.read_text(), re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("http"):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{doc}: {target}"
        if anchor and resolved == RESULTS:
            assert anchor in anchors, f"{doc}: {target}"


@pytest.fixture(scope="module")
def rendered():
    """What the committed results give, rendered once for the whole file."""
    return readme.render(ROOT / "figures")


def _copy(tmp_path, doc=None, text=None) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    for name, path in DOCS.items():
        (tmp_path / name).write_text(text if name == doc else path.read_text())
    return tmp_path


def test_generated_parts_match_the_committed_json(rendered):
    assert readme.check(ROOT, ROOT / "figures", rendered) == []


@pytest.mark.parametrize("doc,block", [("docs/results.md", "tf-vs-gd"), ("README.md", "tf-vs-gd")])
def test_check_fails_when_one_number_changes(tmp_path, rendered, doc, block):
    text = DOCS[doc].read_text()
    m = re.search(rf"<!-- generated:{block} -->\n.*?(\d\.\d{{3}})", text, re.S)
    changed = text[:m.start(1)] + ("9" if m.group(1)[0] != "9" else "8") + text[m.start(1) + 1:]
    repo = _copy(tmp_path, doc, changed)
    assert readme.check(repo, ROOT / "figures", rendered) == [f"{doc}:{block}"]
    readme.update(repo, ROOT / "figures", rendered=rendered)
    assert (repo / doc).read_text() == text


@pytest.mark.parametrize("doc", list(DOCS))
def test_missing_block_is_a_clear_error(tmp_path, rendered, doc):
    block = "necessity"
    text = DOCS[doc].read_text().replace(f"<!-- generated:{block} -->", "").replace(f"<!-- /generated:{block} -->", "")
    with pytest.raises(ValueError, match=f"{re.escape(doc)}.*{block}"):
        readme.update(_copy(tmp_path, doc, text), ROOT / "figures", write=False, rendered=rendered)


@pytest.mark.parametrize("doc,block", [("docs/results.md", "reward-noise"), ("docs/results.md", "ablations"),
                                       ("docs/results.md", "self-correction"), ("README.md", "mechanism")])
def test_check_fails_when_one_verdict_changes(tmp_path, rendered, doc, block):
    """The claims are generated too: flipping one verdict is caught like a number."""
    text = DOCS[doc].read_text()
    start = text.index(f"<!-- generated:{block} -->")
    m = re.compile(r"\*\*(supported|contradicted|not resolved|not trained)").search(text, start)
    other = "contradicted" if m.group(1) != "contradicted" else "supported"
    repo = _copy(tmp_path, doc, text[:m.start(1)] + other + text[m.end(1):])
    assert readme.check(repo, ROOT / "figures", rendered) == [f"{doc}:{block}"]


def test_no_result_section_uses_the_old_interval_overlap_rule():
    text = RESULTS.read_text()
    assert "intervals overlap" not in text and "(intervals overlap)" not in text


def test_cli_readme_check_and_rewrite(tmp_path, rendered, monkeypatch, capsys):
    """`icalign readme --check` exits 1 naming a stale block, and `icalign readme` fixes it
    (the rendering itself is the fixture's, so this checks the wiring only)."""
    from icalign import cli

    monkeypatch.setattr(readme, "render", lambda root: rendered)
    text = RESULTS.read_text()
    i = text.index("**supported**", text.index("<!-- generated:tf-vs-gd -->"))
    repo = _copy(tmp_path, "docs/results.md", text[:i] + "**contradicted**" + text[i + len("**supported**"):])
    assert cli.main(["readme", "--check", "--repo", str(repo)]) == 1
    assert "docs/results.md:" in capsys.readouterr().err
    assert cli.main(["readme", "--repo", str(repo)]) == 0
    assert (repo / "docs/results.md").read_text() == text and cli.main(["readme", "--check", "--repo", str(repo)]) == 0
