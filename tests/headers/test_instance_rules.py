"""Per-instance rules, one per test, on edited copies of pydicom's CT_small.dcm."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from medforensics.headers import Finding, SEVERITY_WEIGHTS, combine, inspect_instance
from medforensics.headers.uids import is_scanner_vendor, toolkit_of_uid, toolkit_of_version_name


def _save(ds: pydicom.Dataset, tmp_path: Path, name: str = "x.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path)
    return path


def _codes(path: Path, **kw) -> dict[str, Finding]:
    return {f.code: f for f in inspect_instance(path, **kw).findings}


def test_untouched_ct_small_has_no_finding(tmp_path, ct_small):
    assert inspect_instance(_save(ct_small, tmp_path)).findings == []


def test_missing_type1_ct_attributes(tmp_path, ct_small):
    ds = ct_small
    del ds.RescaleSlope
    del ds.ImagePositionPatient
    f = _codes(_save(ds, tmp_path))["missing_type1_attribute"]
    assert set(f.evidence["missing"]) == {"RescaleSlope", "ImagePositionPatient"}
    assert f.severity == "medium"


def test_missing_type2_ct_attribute(tmp_path, ct_small):
    ds = ct_small
    del ds.KVP
    f = _codes(_save(ds, tmp_path))["missing_type2_attribute"]
    assert f.evidence["missing"] == ["KVP"]


def test_implausible_values(tmp_path, ct_small):
    ds = ct_small
    ds.KVP = 900
    ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
    f = _codes(_save(ds, tmp_path))["implausible_attribute_value"]
    assert set(f.evidence["values"]) == {"KVP", "ImageOrientationPatient"}


def test_bits_stored_above_bits_allocated(tmp_path, ct_small):
    ds = ct_small
    ds.BitsStored = 20
    ds.HighBit = 19
    f = _codes(_save(ds, tmp_path), pixels=False)["inconsistent_pixel_description"]
    assert f.severity == "high"
    assert "BitsStored 20 exceeds BitsAllocated 16" in f.message


def test_pixel_data_shorter_than_rows_times_columns(tmp_path, ct_small):
    ds = ct_small
    ds.Rows = 256  # the pixel data holds 128 rows
    f = _codes(_save(ds, tmp_path))["pixel_data_length_mismatch"]
    assert (f.evidence["actual_bytes"], f.evidence["expected_bytes"]) == (128 * 128 * 2, 256 * 128 * 2)
    assert f.severity == "high"


def test_native_pixels_under_a_compressed_transfer_syntax(tmp_path, ct_small):
    ds = ct_small
    path = _save(ds, tmp_path)
    raw = bytearray(path.read_bytes())
    old, new = ExplicitVRLittleEndian.encode(), RLELossless.encode()
    assert len(old) == len(new)  # both 19 characters: the file meta keeps its lengths
    at = raw.index(old + b"\x00")
    raw[at: at + len(old)] = new
    path.write_bytes(bytes(raw))
    f = _codes(path)["transfer_syntax_encoding_mismatch"]
    assert f.severity == "high"


def test_pixel_values_beyond_bits_stored(tmp_path, ct_small):
    ds = ct_small
    ds.BitsStored = 10
    ds.HighBit = 9
    f = _codes(_save(ds, tmp_path))["pixel_values_exceed_bits_stored"]
    assert f.evidence["stored_max"] > 511


def test_toolkit_uid_with_vendor_manufacturer_is_medium_without_vendor_info(tmp_path, ct_small):
    ds = ct_small
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert _codes(_save(ds, tmp_path, "a.dcm"))["toolkit_sop_instance_uid"].severity == "medium"
    ds.Manufacturer = "Research Lab"
    assert _codes(_save(ds, tmp_path, "b.dcm"))["toolkit_sop_instance_uid"].severity == "info"


def test_toolkit_tables():
    assert toolkit_of_uid("1.2.826.0.1.3680043.8.498.123") == "pydicom"
    assert toolkit_of_uid("1.2.276.0.7230010.3.1.4.5") == "DCMTK"
    assert toolkit_of_uid("1.2.826.0.1.3680043.2.1143.9") == "GDCM (ITK/SimpleITK)"
    assert toolkit_of_uid("1.3.12.2.1107.5.1.4.60064.1") is None
    assert toolkit_of_version_name("OFFIS_DCMTK_361") == "DCMTK"
    assert is_scanner_vendor("GE MEDICAL SYSTEMS") and is_scanner_vendor("Philips Medical Systems")
    assert not is_scanner_vendor("IMAGE RESEARCH LAB")  # 'GE' inside a word is not GE


def test_score_is_a_noisy_or_of_weights():
    high = Finding("x", "high", "m")
    medium = Finding("y", "medium", "m")
    assert combine([]) == 0.0
    assert combine([high]) == pytest.approx(SEVERITY_WEIGHTS["high"])
    assert combine([medium, medium]) == pytest.approx(1 - (1 - SEVERITY_WEIGHTS["medium"]) ** 2)
    with pytest.raises(ValueError, match="unknown severity"):
        Finding("z", "critical", "m")


@pytest.mark.parametrize("content", [
    b"", b"not dicom at all" * 20, b"\0" * 128 + b"DICM" + b"\xff" * 40,
    b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff",  # meta cut inside its first element
])
def test_bad_files_give_a_finding_not_an_exception(tmp_path, content, ct_small):
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    report = inspect_instance(path)
    assert report.error
    assert [f.code for f in report.findings] == ["unreadable_header"]
    assert report.flagged()
    assert report.to_dict()["findings"][0]["path"] == str(path)


def test_missing_path_and_folder_are_named_errors(tmp_path, ct_small):
    assert "not found" in inspect_instance(tmp_path / "nope.dcm").error
    assert "directory" in inspect_instance(tmp_path).error


def test_truncated_pixel_data_is_reported(tmp_path, ct_small):
    path = _save(ct_small, tmp_path)
    path.write_bytes(path.read_bytes()[:-5000])
    report = inspect_instance(path)
    assert report.findings and report.flagged()
    assert {f.code for f in report.findings} & {"unreadable_header", "pixel_data_length_mismatch"}


def test_report_is_json_ready(tmp_path, ct_small):
    import json

    ds = ct_small
    del ds.KVP
    d = inspect_instance(_save(ds, tmp_path)).to_dict()
    assert json.loads(json.dumps(d))["findings"][0]["code"] == "missing_type2_attribute"
    assert 0 < d["header_score"] < 0.5


def test_malformed_values_become_findings_not_exceptions(tmp_path, ct_small):
    path = _save(ct_small, tmp_path)
    raw = path.read_bytes()
    ipp = b"-158.135803\\-179.035797\\-75.699997"
    assert raw.count(ipp) == 1
    path.write_bytes(raw.replace(ipp, b"abc" + b"x" * (len(ipp) - 3)))  # same length, not numbers
    report = inspect_instance(path)
    assert report.error is None
    assert report.facts["position"] is None  # unusable, so the series rules order by InstanceNumber
    assert {f.code for f in report.findings} <= {"malformed_attribute", "missing_type1_attribute"}


def test_series_with_an_unreadable_member_still_reports(ct_series):
    from medforensics.headers import inspect_series

    ct_series[1].write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    series = inspect_series(ct_series)
    assert [r.error is not None for r in series.instances].count(True) == 1
    assert series.instances[-1].path == str(ct_series[1])  # unreadable ones come last
    assert series.flagged()



def test_a_slice_saved_anew_by_a_script_is_flagged_on_its_own(tmp_path, ct_small):
    """The whole-window re-save: new pydicom SOPInstanceUID, file written by pydicom, series UID
    untouched, vendor manufacturer — flagged by the instance alone (no other slice needed)."""
    ds = ct_small
    assert is_scanner_vendor(str(ds.Manufacturer)) and toolkit_of_uid(str(ds.SeriesInstanceUID)) is None
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    report = inspect_instance(_save(ds, tmp_path, "a.dcm"))
    codes = {f.code: f for f in report.findings}
    f = codes["sop_uid_reissued_by_toolkit"]
    assert f.severity == "medium" and f.evidence["series_instance_uid"] == str(ds.SeriesInstanceUID)
    assert "pydicom" in f.message and report.flagged()


@pytest.mark.parametrize("change", ["anonymised_whole", "no_vendor", "vendor_uid"])
def test_the_reissue_rule_stays_silent_when_the_identity_is_consistent(tmp_path, ct_small, change):
    ds = ct_small
    if change == "anonymised_whole":  # an anonymiser re-identifies study, series and instance with one root
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    elif change == "no_vendor":  # a research object made by a script
        ds.SOPInstanceUID, ds.Manufacturer = generate_uid(), "Research Lab"
    else:  # the scanner's own UID: nothing was re-issued
        pass
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert "sop_uid_reissued_by_toolkit" not in _codes(_save(ds, tmp_path, f"{change}.dcm"))
