"""No rule fires on genuine clinical instances; nothing genuine is flagged in the shared real series."""

from __future__ import annotations

import pytest

from medforensics.headers import inspect_instance, inspect_paths
from medforensics.io.samples import pydicom_data_folder

#: pydicom-data instances made by scanners (vendor in Manufacturer, image IOD of the modality)
#: and stored as the vendor / NEMA sample wrote them — the header rules must say nothing at all.
GENUINE_PYDICOM_DATA = [
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # Siemens MR, 12-bit with overlays
    "MR2_J2KI.dcm", "MR2_J2KR.dcm", "MR2_UNCR.dcm",  # Philips MR in three encodings
    "OBXXXX1A.dcm", "OBXXXX1A_2frame.dcm",  # Philips US palette colour
    "RG3_J2KI.dcm", "RG3_J2KR.dcm", "RG3_UNCR.dcm",  # Fuji CR
    "US1_J2KI.dcm", "US1_J2KR.dcm", "US1_UNCR.dcm",  # GE US
    "color3d_jpeg_baseline.dcm",  # SonoSite US, 120 frames
    "eCT_Supplemental.dcm",  # enhanced CT, 2 frames
    "gdcm-US-ALOKA-16.dcm",  # Aloka US
]
#: shared real series where not even a low finding fires (TCIA re-saves by POSDA, untouched)
QUIET_SERIES = ["pyvista__vtk-data/Pancreas-CT-CB_001_CT", "niivue__niivue-demo-images/VS-SEG-001_MR_T1"]


@pytest.mark.parametrize("name", GENUINE_PYDICOM_DATA)
def test_no_rule_fires_on_genuine_pydicom_data(name):
    folder = pydicom_data_folder()
    if folder is None or not (folder / name).is_file():
        pytest.skip("pydicom-data is not installed")
    report = inspect_instance(folder / name)
    assert report.error is None
    assert [f.to_dict() for f in report.findings] == []
    assert report.score == 0.0


def test_shared_real_series_are_not_flagged(shared_data):
    volumes = shared_data / "volumes"
    if not volumes.is_dir():
        pytest.skip("shared volumes are not available")
    folders = sorted(p for p in volumes.glob("*/*") if p.is_dir())
    assert len(folders) >= 5
    series = inspect_paths(folders)
    instances = [r for s in series for r in s.instances]
    assert len(instances) >= 250
    assert all(r.error is None for r in instances)
    flagged = [(r.path, [f.code for f in r.all_findings]) for r in instances if r.flagged()]
    assert flagged == []
    assert [s.series_instance_uid for s in series if s.flagged()] == []
    for name in QUIET_SERIES:
        quiet = [s for s in series if s.instances and s.instances[0].path.startswith(str(volumes / name))]
        assert len(quiet) == 1
        assert quiet[0].findings == [] and all(not r.findings for r in quiet[0].instances)


def test_attacks_on_a_real_series_are_flagged(shared_data, tmp_path):
    """A 16-slice window of a real Philips CT: one slice re-saved with a pydicom UID, one with
    added noise (σ 15 HU), three with an injected blob re-saved by pydicom — each flagged,
    the other slices not."""
    import shutil

    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    source = shared_data / "volumes" / QUIET_SERIES[0]
    if not source.is_dir():
        pytest.skip("shared volumes are not available")
    ordered = [r.path for r in inspect_paths([source], pixels=False)[0].instances][20:36]
    paths = [shutil.copy(p, tmp_path / f"{i:02d}.dcm") for i, p in enumerate(ordered)]

    ds = pydicom.dcmread(paths[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(paths[3])

    ds = pydicom.dcmread(paths[7])
    arr = ds.pixel_array.astype(np.float64) + np.random.default_rng(0).normal(0, 15 / float(ds.RescaleSlope),
                                                                              ds.pixel_array.shape)
    ds.PixelData = np.clip(np.round(arr), 0, 4095).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(paths[7])

    for k in (11, 12, 13):
        ds = pydicom.dcmread(paths[k])
        arr = ds.pixel_array.copy()
        arr[200:216, 200:216] += 50
        ds.PixelData = arr.tobytes()
        del ds.file_meta.ImplementationClassUID
        if "ImplementationVersionName" in ds.file_meta:
            del ds.file_meta.ImplementationVersionName
        ds.save_as(paths[k], enforce_file_format=True)

    (series,) = inspect_paths([tmp_path])
    by = {r.path: r for r in series.instances}
    expect = {3: "sop_instance_uid_root_differs", 7: "noise_floor_outlier", 11: "toolkit_implementation_class",
              12: "toolkit_implementation_class", 13: "toolkit_implementation_class"}
    for k, code in expect.items():
        r = by[str(paths[k])]
        assert code in {f.code for f in r.all_findings}, (k, [f.code for f in r.all_findings])
        assert r.flagged(), (k, r.score)
    assert [k for k, p in enumerate(paths) if k not in expect and by[str(p)].flagged()] == []
