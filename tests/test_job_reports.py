"""reports.generate: a real report, made in steps with progress, downloaded as an artifact."""
from __future__ import annotations

import csv
import io

from jobs import reports
from tests.test_api_follow import read_events


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


ROWS = [
    {"date": "2025-03-01", "region": "North", "product": "Widget", "units": 2, "unit_price": 10.0},
    {"date": "2025-03-02", "region": "North", "product": "Widget", "units": 1, "unit_price": 10.0},
    {"date": "2025-04-01", "region": "South", "product": "=HYPERLINK(\"x\")", "units": 3, "unit_price": 1.5},
]


def test_an_html_report_is_generated_in_steps_and_downloaded(client, worker_process):
    body = {"job": "reports.generate", "kwargs": {"title": "Q1 <sales>", "generated": 3000, "steps": 5, "pause": 0.2}}
    job_id = post(client, body)
    events = read_events(client.get(f"/jobs/{job_id}/events"))

    percents = [data["percent"] for event, data in events if event == "progress"]
    assert percents == sorted(percents) and len(set(percents)) >= 3
    assert percents[-1] == 100.0
    final = events[-1][1]
    assert final["status"] == "finished"
    artifact = final["result"]["artifact"]
    assert artifact == {
        "name": "report.html",
        "url": f"/jobs/{job_id}/artifact?name=report.html",
        "bytes": artifact["bytes"],
        "content_type": "text/html",
    }
    assert final["result"]["rows"] == 3000

    download = client.get(artifact["url"])
    assert download.status_code == 200
    assert download.headers["Content-Disposition"] == "attachment; filename=report.html"
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in download.headers["Content-Security-Policy"]
    page = download.get_data(as_text=True)
    assert len(download.data) == artifact["bytes"]
    assert "<h1>Q1 &lt;sales&gt;</h1>" in page  # the title is escaped
    assert f"{final['result']['totals']['orders']:,} orders" in page
    # Without ?name= the only artifact is served.
    assert client.get(f"/jobs/{job_id}/artifact").data == download.data


def test_a_csv_report_of_given_rows(client, work):
    job_id = post(client, {"job": "reports.generate", "kwargs": {"format": "csv", "rows": ROWS, "steps": 2}})
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished"
    assert job["result"]["totals"] == {"orders": 3, "units": 6, "revenue": 34.5}
    assert job["progress"]["message"] == "wrote report.csv"
    table = list(csv.reader(io.StringIO(client.get(job["result"]["artifact"]["url"]).get_data(as_text=True))))
    assert table == [
        ["region", "product", "orders", "units", "revenue"],
        ["North", "Widget", "2", "3", "30.00"],
        ["South", "'=HYPERLINK(\"x\")", "1", "3", "4.50"],  # no formula for a spreadsheet to run
        ["TOTAL", "", "3", "6", "34.50"],
    ]


def test_the_same_seed_makes_the_same_report():
    first = reports.generate(format="csv", generated=500, seed=7)
    second = reports.generate(format="csv", generated=500, seed=7)
    assert first["totals"] == second["totals"]
    assert reports.generate(format="csv", generated=500, seed=8)["totals"] != first["totals"]


def test_bad_rows_are_refused_with_422(client, connection):
    bad_rows = [{**ROWS[0], "units": -1}, {**ROWS[0], "date": "yesterday"}, {**ROWS[0], "extra": 1}]
    for row in bad_rows:
        response = client.post("/jobs", json={"job": "reports.generate", "kwargs": {"rows": [row]}})
        assert response.status_code == 422, row
    assert client.post("/jobs", json={"job": "reports.generate", "kwargs": {"format": "pdf"}}).status_code == 422
    assert connection.keys("rq:job:*") == []


def test_artifacts_cannot_reach_other_files(client, work, job_files):
    (job_files / "secret.txt").write_text("not for clients")
    job_id = post(client, {"job": "reports.generate", "kwargs": {"format": "csv", "generated": 10, "steps": 1}})
    work()
    assert client.get(f"/jobs/{job_id}/artifact?name=../../secret.txt").status_code == 422
    assert client.get(f"/jobs/{job_id}/artifact?name=.hidden").status_code == 422
    assert client.get(f"/jobs/{job_id}/artifact?name=other.csv").status_code == 404
    assert client.get("/jobs/..%2F..%2Fsecret.txt/artifact").status_code == 404
    assert client.get("/jobs/no-such-job/artifact").status_code == 404
    problem = client.get("/jobs/no-such-job/artifact")
    assert problem.headers["Content-Type"] == "application/problem+json"
