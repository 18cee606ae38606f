from __future__ import annotations

import numpy as np
import pytest
from PIL import Image



@pytest.fixture()
def scan_folder(tmp_path):
    """A folder with two PNGs, a sub-folder with a DICOM, a broken file and a hidden file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray((rng.random((96, 128)) * 255).astype(np.uint8)).save(root / "a.png")
    Image.fromarray((rng.random((300, 300, 3)) * 255).astype(np.uint8)).save(root / "b.png")
    import pydicom
    from pathlib import Path

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    (root / "sub" / "ct.dcm").write_bytes(ct.read_bytes())
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    (root / ".hidden.png").write_bytes(b"")
    return root
