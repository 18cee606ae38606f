"""Attacks that edit a series and re-save it with a common toolkit produce the right findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

from medforensics.headers import DEFAULT_THRESHOLD, inspect_paths, inspect_series


def _codes(report) -> set[str]:
    return {f.code for f in report.all_findings}


def _by_path(series):
    return {Path(r.path).name: r for r in series.instances}


def test_genuine_synthetic_series_has_no_finding(ct_series):
    series = inspect_series(ct_series)
    assert [r.all_findings for r in series.instances] == [[] for _ in ct_series]
    assert series.findings == []
    assert series.score == 0.0


def test_instances_come_back_in_slice_order(ct_series):
    series = inspect_series(list(reversed(ct_series)))
    assert [Path(r.path).name for r in series.instances] == [p.name for p in ct_series]


def test_resaved_slice_with_generated_sop_uid_is_flagged(ct_series):
    target = ct_series[4]
    ds = pydicom.dcmread(target)
    uid = generate_uid()  # pydicom's root 1.2.826.0.1.3680043.8.498.
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(target)
    series = inspect_series(ct_series)
    hit = _by_path(series)[target.name]
    assert {"sop_instance_uid_root_differs", "toolkit_sop_instance_uid"} <= _codes(hit)
    assert hit.score >= DEFAULT_THRESHOLD
    assert series.flagged()
    others = [r for r in series.instances if r.path != str(target)]
    assert all(not r.all_findings for r in others)


def test_uid_changed_without_file_meta_is_a_file_meta_mismatch(ct_series):
    target = ct_series[2]
    ds = pydicom.dcmread(target)
    ds.SOPInstanceUID = generate_uid()  # file meta left as it was
    ds.save_as(target)
    hit = _by_path(inspect_series(ct_series))[target.name]
    assert "file_meta_sop_instance_mismatch" in _codes(hit)
    assert hit.flagged()


def test_instance_turned_into_secondary_capture_is_flagged(ct_series):
    target = ct_series[3]
    ds = pydicom.dcmread(target)
    ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.save_as(target)
    series = inspect_series(ct_series)
    hit = _by_path(series)[target.name]
    codes = _codes(hit)
    assert "secondary_capture_with_acquisition_pixels" in codes
    assert "header_differs_from_series" in codes  # Modality and SOPClassUID differ from the series
    assert {f.evidence["attribute"] for f in hit.series_findings if f.code == "header_differs_from_series"} >= {
        "Modality", "SOPClassUID"}
    assert hit.flagged()


def test_three_edited_slices_resaved_by_pydicom_are_flagged(ct_series):
    edited = ct_series[3:6]
    for path in edited:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.int32)
        yy, xx = np.mgrid[: arr.shape[0], : arr.shape[1]]
        blob = ((yy - 64) ** 2 + (xx - 70) ** 2) < 8**2
        arr[blob] += 60  # an injected nodule, CT-GAN style
        ds.PixelData = arr.astype(np.int16).tobytes()
        del ds.file_meta.ImplementationClassUID
        del ds.file_meta.ImplementationVersionName
        ds.save_as(path, enforce_file_format=True)  # pydicom writes its own implementation class
        assert pydicom.dcmread(path).file_meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID
    series = inspect_series(ct_series)
    by = _by_path(series)
    for path in edited:
        r = by[path.name]
        assert "toolkit_implementation_class" in _codes(r)
        attrs = {f.evidence["attribute"] for f in r.series_findings if f.code == "header_differs_from_series"}
        assert attrs >= {"ImplementationClassUID", "ImplementationVersionName"}
        assert r.flagged()
    untouched = [by[p.name] for p in ct_series if p not in edited]
    assert all(not r.flagged() for r in untouched)


def test_slice_with_a_different_noise_floor_is_flagged(ct_series):
    target = ct_series[4]
    ds = pydicom.dcmread(target)
    rng = np.random.default_rng(1)
    arr = ds.pixel_array.astype(np.float64) + rng.normal(0.0, 25.0, ds.pixel_array.shape)
    ds.PixelData = np.round(arr).astype(np.int16).tobytes()
    ds.save_as(target)
    series = inspect_series(ct_series)
    hit = _by_path(series)[target.name]
    noise = [f for f in hit.series_findings if f.code == "noise_floor_outlier"]
    assert noise and noise[0].evidence["value"] > 1.5 * noise[0].evidence["neighbours"]
    assert hit.flagged()
    assert not any(f.code == "noise_floor_outlier" for r in series.instances if r.path != str(target)
                   for f in r.all_findings)
    import json

    assert json.loads(json.dumps(series.to_dict()))["header_score"] == series.score


def test_duplicate_position_and_instance_number_out_of_order(ct_series):
    ds = pydicom.dcmread(ct_series[6])
    ds.ImagePositionPatient = pydicom.dcmread(ct_series[5]).ImagePositionPatient
    ds.save_as(ct_series[6])
    ds = pydicom.dcmread(ct_series[2])
    ds.InstanceNumber = 40
    ds.save_as(ct_series[2])
    series = inspect_series(ct_series)
    codes = {f.code for f in series.findings}
    assert {"duplicate_slice_position", "instance_number_out_of_order"} <= codes


def test_acquisition_time_out_of_order(ct_series):
    ds = pydicom.dcmread(ct_series[4])
    ds.AcquisitionTime = "120000"
    ds.save_as(ct_series[4])
    series = inspect_series(ct_series)
    hit = _by_path(series)[ct_series[4].name]
    assert [f.evidence["attribute"] for f in hit.series_findings if f.code == "time_out_of_order"] == [
        "AcquisitionTime"]


def test_inspect_paths_groups_by_series_and_walks_folders(ct_series, tmp_path):
    other = tmp_path / "series" / "notes.txt"
    other.write_text("not DICOM")
    reports = inspect_paths([tmp_path / "series"])
    assert len(reports) == 1
    assert len(reports[0].instances) == len(ct_series)
    assert reports[0].series_instance_uid == str(pydicom.dcmread(ct_series[0]).SeriesInstanceUID)


def test_header_only_mode_skips_pixel_rules(ct_series):
    target = ct_series[4]
    ds = pydicom.dcmread(target)
    arr = ds.pixel_array.astype(np.float64) + np.random.default_rng(2).normal(0.0, 25.0, ds.pixel_array.shape)
    ds.PixelData = np.round(arr).astype(np.int16).tobytes()
    ds.save_as(target)
    series = inspect_series(ct_series, pixels=False)
    assert all(r.facts["stats"] is None for r in series.instances)
    assert series.findings == []


def test_degenerate_orientation_falls_back_to_instance_numbers(ct_series):
    for path in ct_series:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]  # no normal
        ds.save_as(path)
    series = inspect_series(list(reversed(ct_series)))
    assert [Path(r.path).name for r in series.instances] == [p.name for p in ct_series]
    assert "duplicate_slice_position" not in {f.code for f in series.findings}
    assert all("implausible_attribute_value" in {f.code for f in r.findings} for r in series.instances)


def _resave_with_pydicom(path: Path) -> None:
    ds = pydicom.dcmread(path)
    uid = generate_uid()  # pydicom's root
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    del ds.file_meta.ImplementationClassUID
    del ds.file_meta.ImplementationVersionName
    ds.save_as(path, enforce_file_format=True)


def test_half_of_the_series_resaved_by_a_script_is_flagged_without_a_majority(ct_series):
    # CT-GAN edits may span many consecutive slices: no ⅔ majority rule can see them, the writer can
    edited = ct_series[: len(ct_series) // 2]
    for path in edited:
        _resave_with_pydicom(path)
    series = inspect_series(ct_series)
    by = _by_path(series)
    for path in edited:
        r = by[path.name]
        mixed = [f for f in r.series_findings if f.code == "series_mixes_toolkit_writer"]
        assert {f.evidence["part"] for f in mixed} == {"sop_instance_uid", "implementation_class"}
        assert r.flagged()
    assert not any(by[p.name].flagged() for p in ct_series if p not in edited)
    assert series.flagged()


def test_a_series_rewritten_whole_by_one_script_is_not_a_mixed_writer(ct_series):
    for path in ct_series:  # an anonymiser or converter that re-writes every slice
        _resave_with_pydicom(path)
    series = inspect_series(ct_series)
    assert "series_mixes_toolkit_writer" not in {f.code for r in series.instances for f in r.all_findings}
