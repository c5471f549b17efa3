"""`make docs` without Quarto: every notebook becomes a page of an offline site with a contents page."""

import subprocess
import sys
from html.parser import HTMLParser

from helpers import ROOT


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href"]


def test_every_notebook_is_a_page_linked_from_the_index(tmp_path):
    r = subprocess.run([sys.executable, ROOT / "tools" / "docs.py", "--out", tmp_path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    notebooks = sorted(ROOT.glob("nbs/*.ipynb"))
    links = Links()
    links.feed((tmp_path / "index.html").read_text())
    expected = {"home.html" if nb.stem == "index" else f"{nb.stem}.html" for nb in notebooks}
    assert set(links.hrefs) == expected and all((tmp_path / page).is_file() for page in expected)
    config = (tmp_path / "00_config.html").read_text()
    assert "get_settings" in config and "Settings from" in config
    assert "#| export" not in config and "from fastcore.test import" not in config  # directives and hidden cells left out
