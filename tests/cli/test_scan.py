from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from medforensics.cli import app

runner = CliRunner()


def test_scan_folder_reports_broken_file_and_scores_the_rest(tiny_model_dir, scan_folder, tmp_path):
    out_json, out_csv, report = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.html"
    res = runner.invoke(app, ["scan", str(scan_folder), "--model", str(tiny_model_dir), "--json", str(out_json),
                              "--csv", str(out_csv), "--report", str(report)])
    assert res.exit_code == 1, res.output  # one file failed
    payload = json.loads(out_json.read_text())
    assert payload["threshold"] == 0.5
    assert payload["model"] == str(tiny_model_dir)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in payload["results"]}
    assert set(by_name) == {"a.png", "b.png", "ct.dcm", "broken.png"}  # hidden file skipped
    assert by_name["broken.png"]["score"] is None
    assert by_name["broken.png"]["error"]
    for name in ("a.png", "b.png", "ct.dcm"):
        r = by_name[name]
        assert r["error"] is None
        assert 0.0 <= r["score"] <= 1.0
        assert r["verdict"] == ("fake" if r["score"] >= 0.5 else "real")
    assert by_name["ct.dcm"]["modality"] == "ct"
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4
    assert {r["path"] for r in rows} == {r["path"] for r in payload["results"]}
    html = report.read_text()
    assert "broken.png" in html
    assert "data:image/png;base64" in html


def test_scan_all_good_exits_zero_and_is_deterministic(tiny_model_dir, scan_folder, tmp_path):
    (scan_folder / "broken.png").unlink()
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        res = runner.invoke(app, ["scan", str(scan_folder), "--model", str(tiny_model_dir), "--json", str(out)])
        assert res.exit_code == 0, res.output
        outs.append([r["score"] for r in json.loads(out.read_text())["results"]])
    assert outs[0] == outs[1]


def test_scan_threshold_option_changes_verdicts(tiny_model_dir, scan_folder, tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["scan", str(scan_folder / "a.png"), "--model", str(tiny_model_dir), "--threshold", "0",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output  # a fake verdict is not a failure: only unreadable files are
    (r,) = json.loads(out.read_text())["results"]
    assert r["verdict"] == "fake"
    assert "1 flagged fake" in res.output


def test_scan_refuses_to_overwrite_outputs(tiny_model_dir, scan_folder, tmp_path):
    out = tmp_path / "exists.json"
    out.write_text("keep me")
    res = runner.invoke(app, ["scan", str(scan_folder), "--model", str(tiny_model_dir), "--json", str(out)])
    assert res.exit_code == 2
    assert out.read_text() == "keep me"


def test_scan_missing_path_and_bad_model(tiny_model_dir, tmp_path):
    res = runner.invoke(app, ["scan", str(tmp_path / "nope"), "--model", str(tiny_model_dir)])
    assert res.exit_code == 2
    assert "nope" in res.output
    res = runner.invoke(app, ["scan", str(tmp_path), "--model", str(tmp_path / "no-model")])
    assert res.exit_code == 2
    assert "cannot load model" in res.output


def test_special_files_and_dangling_links_are_named_errors_not_hangs(tiny_model_dir, scan_folder, tmp_path):
    """A FIFO or device given as an argument, and a dangling link among the inputs, fail by name; the rest scans."""
    import os

    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "does-not-exist.png")
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["scan", str(fifo), "/dev/zero", str(dangling), str(scan_folder / "a.png"),
                              "--model", str(tiny_model_dir), "--json", str(out), "--decode-timeout", "20"])
    assert res.exit_code == 1, res.output
    results = {r["path"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == [str(fifo), "/dev/zero", str(dangling), str(scan_folder / "a.png")]
    assert "not a regular file" in results[str(fifo)]["error"]
    assert "not a regular file" in results["/dev/zero"]["error"]
    assert results[str(dangling)]["error"]
    assert results[str(scan_folder / "a.png")]["score"] is not None
