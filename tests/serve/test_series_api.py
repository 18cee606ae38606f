"""Series verdicts through the REST API: one request with a series' instances, GET /v1/series(/{uid})."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

SERIES, STUDY = "1.2.826.0.1.3680043.8.498.91", "1.2.826.0.1.3680043.8.498.9"


def _series_bytes(tmp_path: Path, n: int, *, series: str = SERIES, first: int = 0) -> list[tuple[str, bytes]]:
    """``n`` slices of one CT series made from pydicom's CT_small.dcm, 5 mm apart."""
    src = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    out = []
    for i in range(first, first + n):
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{series}.{i + 1}"
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = series, STUDY, i + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * i]
        arr = ds.pixel_array.copy()
        arr[10:20, 10:20] += i
        ds.PixelData = arr.tobytes()
        path = tmp_path / f"s{i}.dcm"
        ds.save_as(path)
        out.append((f"slice{i}.dcm", path.read_bytes()))
    return out


def _upload(served, files):
    return served.client.post("/v1/scans", headers=served.headers,
                              files=[("files", (name, data, "application/dicom")) for name, data in files])


def test_one_request_with_a_series_answers_and_stores_its_verdict(make_served, tmp_path, png_bytes):
    served = make_served(threshold=1e-6)  # τ near 0: the whole series is one 3-D region, verdict fake
    files = _series_bytes(tmp_path, 4)
    r = _upload(served, [*files, ("x.png", png_bytes(3))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_ok"] == 5
    (series,) = body["series"]  # the PNG is no series
    assert series["series_uid"] == SERIES and series["study_uid"] == STUDY and series["n_slices"] == 4
    assert series["verdict"] == "fake" and series["source"] == "api" and series["model_id"] == body["model"]["model_id"]
    (region,) = series["regions"]
    assert (region["first_slice"], region["last_slice"]) == (0, 3)
    assert len(series["slices"]) == 4 and len(series["slice_scores"]) == 4
    assert all("slice" not in s["path"] for s in series["slices"])  # upload names are not echoed without store_phi
    store = served.app.state.service.store
    stored = store.get_series(SERIES)
    assert stored.id == series["id"] and stored.n_slices == 4 and store.count_series() == 1

    got = served.client.get(f"/v1/series/{SERIES}", headers=served.headers).json()
    assert got["id"] == series["id"] and got["regions"] == series["regions"]
    listed = served.client.get("/v1/series", headers=served.headers, params={"verdict": "fake"}).json()
    assert listed["total"] == 1 and listed["items"][0]["series_uid"] == SERIES
    assert served.client.get("/v1/series", headers=served.headers, params={"verdict": "real"}).json()["total"] == 0

    # one more instance in another request: judged with the stored ones, the same row updated
    more = _upload(served, _series_bytes(tmp_path, 1, first=4)).json()
    (again,) = more["series"]
    assert again["id"] == series["id"] and again["n_slices"] == 5 and store.count_series() == 1
    assert any(f["code"] == "evidence_not_kept" for f in again["findings"])  # earlier maps are not stored


def test_single_images_make_no_series(served, png_bytes):
    body = _upload(served, [("a.png", png_bytes(0)), ("b.png", png_bytes(1))]).json()
    assert body["series"] == [] and served.app.state.service.store.count_series() == 0


def test_series_routes_check_their_parameters_and_auth(served):
    get = lambda url, **params: served.client.get(url, headers=served.headers, params=params)  # noqa: E731
    assert get("/v1/series/1.2.3").status_code == 404
    assert get("/v1/series", limit=10**9).status_code == 200
    for bad in ({"limit": 10**9 + 1}, {"limit": 0}, {"offset": -1}, {"offset": 10**9 + 1}, {"verdict": "maybe"},
                {"limit": "x"}):
        assert get("/v1/series", **bad).status_code == 422, bad
    assert served.client.get("/v1/series").status_code == 401
    assert served.client.get("/v1/series/1.2.3").status_code == 401


@pytest.mark.parametrize("n", [2])
def test_series_paging(served, tmp_path, n):
    store = served.app.state.service.store
    for i in range(3):
        store.upsert_series({"series_uid": f"1.2.{i}", "n_slices": n, "score": 0.2, "verdict": "real"},
                            model_id="m", source="dicom")
    page = served.client.get("/v1/series", headers=served.headers, params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and [r["series_uid"] for r in page["items"]] == ["1.2.1", "1.2.0"]
    assert served.client.get("/v1/series", headers=served.headers, params={"source": "api"}).json()["total"] == 0
