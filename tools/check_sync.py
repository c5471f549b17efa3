"""Fail when the repository is not what CI accepts: notebooks clean, library and README in sync.

Runs `nbdev_clean` and `nbdev_export` on a throw-away copy of the project, so your working tree is
never touched, and names each file that would change together with the command that fixes it.
"""

import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COPIED = ["settings.ini", "nbs", "mwml", "README.md", "tools"]


def _differences(a: Path, b: Path, pattern: str) -> list[str]:
    "Relative paths matching `pattern` that differ, or exist on one side only, between folders a and b."
    files = {p.relative_to(a) for p in a.glob(pattern)} | {p.relative_to(b) for p in b.glob(pattern)}
    return sorted(str(f) for f in files if not ((a / f).exists() and (b / f).exists() and filecmp.cmp(a / f, b / f, False)))


def main() -> int:
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "project"
        copy.mkdir()
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
            elif src.exists():
                shutil.copy2(src, copy / name)
        for command, pattern, fix in (
            ("nbdev_clean", "nbs/**/*.ipynb", "nbdev_clean"),
            ("nbdev_export", "mwml/**/*.py", "nbdev_export"),
        ):
            done = subprocess.run([str(BIN / command)], cwd=copy, capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"`{command}` failed:\n{done.stdout}{done.stderr}")
                continue
            changed = _differences(ROOT, copy, pattern)
            if changed:
                problems.append(f"{', '.join(changed)} would change: run `{fix}` and commit")
        readme = subprocess.run([sys.executable, str(ROOT / "tools" / "readme.py"), "--check", "--root", str(ROOT)])
        if readme.returncode != 0:
            problems.append("README.md is not what nbs/index.ipynb renders to: run `make readme` and commit")
    for problem in problems:
        print(f"sync check: {problem}", file=sys.stderr)
    if not problems:
        print("sync check: notebooks clean; mwml/ and README.md in sync with nbs/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
