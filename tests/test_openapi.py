"""The OpenAPI document, and schemathesis checking the API against it."""
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import bearer


def test_openapi_document_describes_the_api(client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/jobs/{job_id}/retry", "/queues", "/workers"):
        assert path in spec["paths"], path
    assert client.get("/docs").status_code == 200


def operations(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=bearer())
    return [result.ok() for result in schema.get_all_operations()]


def test_every_response_matches_the_document(app):
    # Driven by hand rather than through schemathesis' pytest plugin, whose
    # collection hooks do not support the pytest this project uses.
    checked = []
    for operation in operations(app):
        # A job's arguments are checked against that job's signature (published
        # at /jobs/registry), and a schedule's cron expression and time zone
        # against crontab and the IANA database, which the request schema cannot
        # express: a schema-valid body may rightly get a 422 there.
        excluded = [positive_data_acceptance] if operation.label in ("POST /jobs", "PUT /schedules/{name}") else []
        if operation.label == "GET /ready":
            # No worker runs in this test, so /ready rightly answers 503 (its documented report).
            excluded = [not_a_server_error]

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def conforms(case):
            case.call_and_validate(excluded_checks=excluded, headers=bearer())

        conforms()
        checked.append(operation.label)
    assert "POST /jobs" in checked
