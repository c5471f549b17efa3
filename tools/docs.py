"""The notebooks as an offline HTML site under `_docs/`, for machines without Quarto.

`python tools/docs.py` renders every notebook in nbs/ to `_docs/<name>.html` the way the published site
shows it (cells marked `#| hide` left out, `#|` directives dropped) and writes `_docs/index.html`, a
table of the lessons in reading order with each one's title and summary. `make docs` runs it where
Quarto is not installed; the docs workflow builds the full Quarto site with `nbdev_docs`.
"""

import argparse
import html
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent


def lesson(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    "`notebook` as a reader sees it: hidden cells removed, directive lines stripped, `default_exp` cells gone."
    cells = []
    for cell in notebook.cells:
        directives = [line[3:].strip() for line in cell.source.splitlines() if line.startswith("#|")]
        if any(d.startswith(("hide", "default_exp")) for d in directives):
            continue
        if cell.cell_type == "code":
            cell.source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("#|")).strip()
        cells.append(cell)
    notebook.cells = cells
    return notebook


def title_and_summary(notebook: nbformat.NotebookNode, fallback: str) -> tuple[str, str]:
    "The `# Title` and `> summary` lines of a notebook's first markdown cell."
    first = next((c.source for c in notebook.cells if c.cell_type == "markdown"), "")
    title = next((line[2:].strip() for line in first.splitlines() if line.startswith("# ")), fallback)
    summary = next((line[2:].strip() for line in first.splitlines() if line.startswith("> ")), "")
    return title, summary


def index_page(entries: list[tuple[str, str, str]]) -> str:
    "The contents page: one row per (file, title, summary)."
    rows = "\n".join(f'<tr><td><a href="{html.escape(f)}">{html.escape(t)}</a></td><td>{html.escape(s)}</td></tr>' for f, t, s in entries)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mwml: the lessons</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{padding:.3em .8em;vertical-align:top}}</style></head>
<body><h1>mwml</h1><p>The notebooks in reading order: each is one room of the system, its documentation and its tests.</p>
<table>{rows}</table></body></html>
"""


def build(nbs: Path, out: Path) -> list[Path]:
    "Render every notebook in `nbs` to `out` and write the index; return the pages written."
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    entries, pages = [], []
    for path in sorted(nbs.glob("*.ipynb")):
        notebook = lesson(nbformat.read(path, as_version=4))
        page = out / ("home.html" if path.stem == "index" else f"{path.stem}.html")
        title, summary = title_and_summary(notebook, path.stem)
        body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
        page.write_text(body)
        entry = (page.name, title, summary)
        entries.insert(0, entry) if path.stem == "index" else entries.append(entry)
        pages.append(page)
    index = out / "index.html"
    index.write_text(index_page(entries))
    return [index, *pages]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="folder of notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "_docs", help="where the site goes")
    args = parser.parse_args()
    pages = build(args.nbs, args.out)
    print(f"wrote {len(pages)} pages to {args.out}; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
