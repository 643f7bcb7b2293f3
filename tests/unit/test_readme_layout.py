"""README's Layout names every module and benchmark script, so a new file cannot go undocumented."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_layout_names_every_module_and_benchmark():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    named = set(re.findall(r"[\w/]+\.(?:py|sh|md)", layout))
    modules = {str(p.relative_to(ROOT / "src" / "ferops")) for p in (ROOT / "src" / "ferops").rglob("*.py")
               if p.name != "__init__.py"}
    missing = {m for m in modules if m not in named}
    benches = {p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    missing |= {f"benchmarks/{b}" for b in benches if b not in named}
    assert not missing, f"README.md Layout: add {sorted(missing)}"
