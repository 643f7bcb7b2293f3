"""Which ferops source files a script or module can run, read statically, and a fingerprint of them.

One reader for three users: tests/unit/test_dvc_deps.py checks that each DVC stage lists the modules its script reaches;
the register stage tags each registered version with the fingerprint of the code it ships (the served model carries a
copy of the package), so a version is reused only while that code is unchanged; and a training checkpoint records the
fingerprint of the training code, so a run killed before a code change starts fresh instead of resuming under it.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # src/ferops
SERVED_ENTRY = PACKAGE / "pyfunc_code.py"  # the registered model's code (MLflow "models from code")


def module_file(name: str, src: Path = PACKAGE.parent) -> Path | None:
    """The file of module `name` (`ferops.data.io`) under `src`, or None (a name inside a module, another package)."""
    for p in (src / (name.replace(".", "/") + ".py"), src / name.replace(".", "/") / "__init__.py"):
        if p.exists():
            return p
    return None


def _package_of(path: Path, src: Path) -> str:
    """`ferops.data` for src/ferops/data/io.py (a relative import's anchor)."""
    return ".".join(path.resolve().relative_to(src.resolve()).parent.parts)


def ferops_imports(path: Path, src: Path = PACKAGE.parent) -> set[Path]:
    """Files of the ferops modules `path` imports, at module level or inside functions, absolute or relative."""
    out: set[Path] = set()
    inside = path.resolve().is_relative_to(src.resolve())
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # `from . import x`, `from ..data import io`: anchored at this file's package
                if not inside:
                    continue
                base = _package_of(path, src).split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            if not module.startswith("ferops"):
                continue
            names = [module] + [f"{module}.{a.name}" for a in node.names]  # `from ferops import tuning`
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("ferops")]
        else:
            continue
        out |= {f for f in (module_file(n, src) for n in names) if f is not None}
    return out


def reached(entry: Path, src: Path = PACKAGE.parent) -> set[Path]:
    """Every ferops source file `entry` can run through its imports (entry itself not included unless imported)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        for f in ferops_imports(todo.pop(), src) - seen:
            seen.add(f)
            todo.append(f)
    return seen


def code_fingerprint(entry: Path, src: Path = PACKAGE.parent) -> str:
    """sha256 (16 hex digits) of `entry` and every ferops module it reaches, by path and content."""
    h = hashlib.sha256()
    for f in sorted({entry, *reached(entry, src)}):
        h.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def served_code_fingerprint() -> str:
    """The fingerprint of the code a registered model runs when served: pyfunc_code.py and what it reaches."""
    return code_fingerprint(SERVED_ENTRY)
