"""The README and docs/: short, every relative link resolves, generated tables regenerate.

Fast (no training): markdown is parsed with the standard library and
``scripts/reproduce.py``'s marker check is called directly.
"""

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Dict, List, Set

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 200
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
MARKER = re.compile(r"<!-- reproduce:(\S+) -->")


def prose_lines(text: str) -> List[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, '_', '-' and spaces (Unicode-aware)
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    """Every anchor GitHub gives the page: heading slugs (duplicates get -1, -2, ...) and HTML anchors."""
    seen: Dict[str, int] = {}
    found: Set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def relative_links(page: Path) -> List[str]:
    links = []
    for line in prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto: ...
                links.append(target)
    return links


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_script_docs", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_slug_rule():
    assert github_slug("Mask sweep (demo): what happens when the test mask differs") == \
        "mask-sweep-demo-what-happens-when-the-test-mask-differs"
    assert github_slug("DC ablation: prior, SR output, both; single- and multi-coil (demo)") == \
        "dc-ablation-prior-sr-output-both-single--and-multi-coil-demo"
    assert github_slug("The `file` mask, **bold** and [a link](x.md)") == "the-file-mask-bold-and-a-link"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    """Every relative link (and image) points at an existing file, and every #anchor at a heading."""
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_docs_pages_are_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README) if t.partition("#")[0]}
    missing = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link to: {missing}"


def test_generated_tables_pass_the_marker_check(reproduce):
    """Each reproduce table lives on exactly one page, and reproduce.py's check accepts that page."""
    holders: Dict[str, List[Path]] = {}
    for page in PAGES:
        for name in set(MARKER.findall(page.read_text())):
            holders.setdefault(name, []).append(page)
    assert [p.relative_to(ROOT) for p in holders.get("demo", [])] == [Path("README.md")], holders
    for name, pages in holders.items():
        assert len(pages) == 1, f"the reproduce:{name} table is on several pages: {pages}"
        first, last = reproduce.check_markers(pages[0], name)
        assert first < last
        # the page says which command writes it, naming itself as the target
        rel = pages[0].relative_to(ROOT).as_posix()
        flag = "--demo" if name == "demo" else f"--config configs/{name}.yaml"
        assert re.search(rf"python scripts/reproduce\.py {re.escape(flag)}.* --readme {re.escape(rel)}\b",
                         pages[0].read_text()), f"{rel} does not give the command that writes reproduce:{name}"


@pytest.mark.parametrize("text, complaint", [
    ("a\n<!-- reproduce:demo -->\nold\n<!-- /reproduce:demo -->\n<!-- reproduce:demo -->\nb\n", "occurs 2 times"),
    ("a\n<!-- reproduce:demo -->\nold\n<!-- /reproduce:demo -->\n<!-- /reproduce:demo -->\n", "occurs 2 times"),
    ("no markers at all\n", "no <!-- reproduce:demo --> line"),
    ("a\n<!-- reproduce:demo -->\nold\n", "no <!-- /reproduce:demo --> line"),
    ("the table sits between the `<!-- reproduce:demo -->` markers\n<!-- /reproduce:demo -->\n",
     "not on a line of its own"),
    ("<!-- /reproduce:demo -->\nold\n<!-- reproduce:demo -->\n", "comes before"),
])
def test_marker_check_refuses(reproduce, tmp_path, text, complaint):
    page = tmp_path / "PAGE.md"
    page.write_text(text)
    with pytest.raises(SystemExit) as err:
        reproduce.check_markers(page, "demo")
    message = str(err.value)
    assert str(page) in message and "reproduce:demo" in message and complaint in message, message
    assert page.read_text() == text


def test_marker_check_accepts_and_write_keeps_the_rest(reproduce, tmp_path):
    page = tmp_path / "PAGE.md"
    page.write_text("# T\n\nsee the table\n  <!-- reproduce:demo -->  \nold\nrows\n<!-- /reproduce:demo -->\nafter\n")
    assert reproduce.check_markers(page, "demo") == (3, 6)
    reproduce.write_readme_table(page, "demo", "| method | acquisition |\n|---|---|\n| a | all |\n")
    assert page.read_text() == ("# T\n\nsee the table\n  <!-- reproduce:demo -->  \n| method | acquisition |\n"
                                "|---|---|\n| a | all |\n<!-- /reproduce:demo -->\nafter\n")


def setup_commands() -> List[str]:
    """The commands of the first code block under the README's 'Set up' heading."""
    text = README.read_text()
    section = text.split("\n## Set up", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_setup_commands_are_the_ones_ci_and_the_demo_use():
    install_and_demo, tests = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # the test command is the one CI runs, verbatim
    assert tests == "python -m pytest -q tests"
    assert tests in [line.strip() for line in ci], f"{tests!r} is not a line of .ci/run"
    # the install is CI's install (editable, with the test extra)
    install, demo = [part.strip() for part in install_and_demo.split("&&")]
    install_args = shlex.split(install)
    ci_install = [shlex.split(line) for line in ci if "pip install" in line and "-e" in shlex.split(line)]
    assert ci_install, ".ci/run installs nothing with pip install -e"
    assert install_args[:2] == ["pip", "install"]
    assert {"-e", ".[test]"} <= set(install_args) and {"-e", ".[test]"} <= set(ci_install[0])
    # the demo command is the one configs/demo.yaml documents, and that config is the demo
    assert demo == "python scripts/train_iconet_fastmri.py fit --config configs/demo.yaml"
    config_text = (ROOT / "configs" / "demo.yaml").read_text()
    assert demo in config_text
    assert yaml.safe_load(config_text)["data"]["demo"] is True
    # the quick check is mentioned
    assert 'python -m pytest -q -m "not slow" tests' in README.read_text()


def test_readme_own_mask_command_is_the_one_the_architecture_page_runs():
    """The README's dotted-path mask is the ARCHITECTURE example that tests/entry/test_extensions.py trains with."""
    from test_architecture import doc_example

    readme = [line for line in README.read_text().splitlines() if "--data.mask.name my_masks." in line]
    assert len(readme) == 1, readme
    name = shlex.split(readme[0])[shlex.split(readme[0]).index("--data.mask.name") + 1]
    filename, code, command = doc_example("Add a mask")
    module, cls = name.split(".")
    assert filename == f"{module}.py" and f"class {cls}" in code and name in command
