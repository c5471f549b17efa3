"""README.md from nbs/index.ipynb, without Quarto (which cannot be installed on the build machines).

`python tools/readme.py` writes README.md; `python tools/readme.py --check` exits 1 when it is stale.
Markdown cells are copied as they are; code cells become fenced blocks (nbdev directives dropped);
cells marked `#| hide` are left out, as nbdev's own README export would.
"""

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"


def _directives(source: str) -> list[str]:
    return [line[3:].strip() for line in source.splitlines() if line.startswith("#|")]


def render(notebook: Path) -> str:
    "The README text for `notebook`."
    parts = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        directives = _directives(cell.source)
        if any(d.startswith(("hide", "default_exp")) for d in directives):
            continue
        if cell.cell_type == "markdown":
            parts.append(cell.source.strip())
        elif cell.cell_type == "code":
            code = "\n".join(line for line in cell.source.splitlines() if not line.startswith("#|"))
            parts.append(f"```python\n{code.strip()}\n```")
            texts = [o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
            if "".join(texts).strip():
                parts.append("```\n" + "".join(texts).rstrip() + "\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    parser.add_argument("--root", type=Path, default=ROOT, help="project folder")
    args = parser.parse_args()
    readme, text = args.root / "README.md", render(args.root / "nbs" / "index.ipynb")
    if args.check:
        return 0 if readme.exists() and readme.read_text() == text else 1
    readme.write_text(text)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
