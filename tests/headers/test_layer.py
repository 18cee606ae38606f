"""medforensics.headers sits just above io: it imports io, pydicom, numpy and the standard library only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import medforensics.headers as headers

ALLOWED_THIRD_PARTY = {"numpy", "pydicom"}


def _imports(path: Path) -> set[tuple[int, str]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {(0, a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add((node.level, node.module or ""))
    return out


def test_headers_imports_only_io_pydicom_numpy():
    package = Path(headers.__file__).parent
    bad = []
    for path in sorted(package.glob("*.py")):
        for level, module in _imports(path):
            top = module.split(".")[0]
            if level == 0 and (top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "__future__"):
                continue
            if level == 1:
                continue  # inside the package
            if level == 2 and top == "io":
                continue
            if level == 0 and module.startswith("medforensics.io"):
                continue
            bad.append((path.name, "." * level + module))
    assert bad == []


def test_every_emitted_code_is_catalogued():
    import re

    from medforensics.headers import CODES

    package = Path(headers.__file__).parent
    text = "\n".join(p.read_text() for p in package.glob("*.py") if p.name != "findings.py")
    emitted = set(re.findall(r'(?:Finding\(|_pin\(rs\[[^\]]*\], |\()\s*"([a-z0-9_]+)", "(?:info|low|medium|high)"', text))
    emitted |= set(re.findall(r'"([a-z_]+_outlier)"', text))
    assert emitted and emitted <= set(CODES), emitted - set(CODES)
    assert len(emitted) >= 25
