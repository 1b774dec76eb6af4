"""rq-dashboard, mounted at /rq: JSON job records, escaped templates, admins only.

rq-dashboard renders job descriptions, results and exception text into its
pages with Underscore's unescaped `<%= %>`, and job arguments come from HTTP
clients: a stored XSS. Its templates are rewritten as they load to escape every
value (`<%- %>`), its one inline script gets the page's CSP nonce, and the page's
Content-Security-Policy runs no other inline script. That script includes
`scripts/*.js` templates, which Jinja does not escape (not HTML by their name),
and one of them quotes the queue name from the URL by hand: every value in those
is written as JSON instead (`|tojson`), which no quote or `</script>` ends.
Its Compact button runs the service's own compaction, which never takes the
queue away from the workers.
"""
from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit, urlunsplit

import rq_dashboard
from flask import Flask, Request, current_app, request
from jinja2 import BaseLoader
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.serializers import JSONSerializer
from rq.utils import as_text
from rq.worker import Worker

from .problems import problem, render
from .queues import ServiceJob, ServiceQueue
from .settings import Settings

URL_PREFIX = "/rq"
BLUEPRINT = "rq_dashboard"
#: Dashboard endpoints that change something; `requeue_all`'s route takes a GET
#: too, which is refused (`service.csrf`): the dashboard itself POSTs.
STATE_CHANGING = frozenset(
    f"{BLUEPRINT}.{name}"
    for name in ("delete_job_view", "requeue_job_view", "requeue_all", "empty_queue", "compact_queue")
)

_JQUERY_ESCAPED = re.compile(r"<%=\s*\$\('<div/>'\)\.text\((.*?)\)\.html\(\)\s*%>")
_INLINE_SCRIPT = '<script type="text/javascript">'


def harden(source: str) -> str:
    """An rq-dashboard template with every Underscore interpolation escaped."""
    source = _JQUERY_ESCAPED.sub(r"<%- \1 %>", source)  # already escaped by jQuery: escape once
    source = source.replace("<%=", "<%-")
    return source.replace(_INLINE_SCRIPT, '<script type="text/javascript" nonce="{{ csp_nonce() }}">')


#: A Jinja value in a script, in quotes or not, that is not written as JSON yet.
_SCRIPT_VALUE = re.compile(r"""(['"]?)\{\{\s*((?:(?!tojson)[^{}])+?)\s*\}\}\1""")


def harden_script(source: str) -> str:
    """An rq-dashboard script template with every value written as JSON."""
    return _SCRIPT_VALUE.sub(r"{{ \2|tojson }}", source)


class _HardeningLoader(BaseLoader):
    def __init__(self, inner: BaseLoader):
        self.inner = inner

    def get_source(self, environment, template):
        source, filename, uptodate = self.inner.get_source(environment, template)
        if template.endswith(".html"):
            source = harden(source)
        elif template.endswith(".js"):
            source = harden_script(source)
        return source, filename, uptodate

    def list_templates(self):
        return self.inner.list_templates()


class _JSONWorker(Worker):
    """Workers as rq-dashboard lists them, reading jobs as the service writes them.

    rq-dashboard looks workers up with RQ's defaults (pickle), so the JSON job
    a busy worker runs could not be read, and the Workers tab answered 500 for
    as long as any worker was at work."""

    @classmethod
    def all(cls, *args, **kwargs):
        kwargs.setdefault("job_class", ServiceJob)
        kwargs.setdefault("serializer", JSONSerializer)
        return super().all(*args, **kwargs)


def mount(app: Flask, settings: Settings) -> None:
    # The dashboard keeps its serializer in a module-level config object, and
    # names RQ's Worker class in its module.
    rq_dashboard.web.config.serializer = JSONSerializer
    rq_dashboard.web.Worker = _JSONWorker
    app.config["RQ_DASHBOARD_REDIS_URL"] = _dashboard_redis_url(settings)
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = settings.dashboard_read_only
    rq_dashboard.web.setup_rq_connection(app)
    blueprint = rq_dashboard.blueprint
    # A plain Flask blueprint; APIFlask asks every blueprint whether to document it.
    blueprint.enable_openapi = False
    if not isinstance(blueprint.jinja_loader, _HardeningLoader):
        blueprint.jinja_loader = _HardeningLoader(blueprint.jinja_loader)
        # Once: the blueprint is rq-dashboard's own object, and Flask takes no
        # handler on a blueprint some app has registered already.
        for error in _BAD_LINKS:
            blueprint.register_error_handler(error, _bad_link)
        blueprint.register_error_handler(InvalidJobOperation, _not_now)
        blueprint.before_request(_page_numbers)
    app.register_blueprint(blueprint, url_prefix=URL_PREFIX)
    app.view_functions[f"{BLUEPRINT}.compact_queue"] = _compact_queue

    @app.before_request
    def read_only_dashboard():
        if settings.dashboard_read_only and request.endpoint in STATE_CHANGING:
            raise problem(403, "The dashboard is read-only (DASHBOARD_READ_ONLY).", title="Forbidden")


#: What rq-dashboard's views raise for a link to a job, queue, registry or page
#: that is not there (an unknown id, `/rq/5/view`, a page number that is not one).
_BAD_LINKS = (NoSuchJobError, LookupError, ValueError, UnboundLocalError)


#: The largest page size and page number a dashboard link may name.
_MOST_PAGES = 1_000_000


def _bad_link(error: Exception | None):
    return render(problem(404, "The dashboard has no such job, queue, registry or page."))


def _page_numbers():
    """rq-dashboard divides by a listing's page size and hands its page to Redis
    as a range: 0, or a number past Redis's integers, would be a 500."""
    if request.endpoint == f"{BLUEPRINT}.list_jobs":
        for name in ("per_page", "page"):
            value = request.view_args.get(name, "")
            if not (value.isdigit() and 0 < int(value) <= _MOST_PAGES):
                return _bad_link(None)
    return None


def _not_now(error: InvalidJobOperation):
    # RQ raises it bare when a requeue finds the job no longer failed.
    return render(problem(409, str(error) or "Only a failed job can be requeued."))


def _compact_queue(queue_name: str):
    """The dashboard's Compact: drop from a queue the ids of jobs that are gone.

    RQ's `Queue.compact` renames the queue away while it sorts it out, so for
    that time workers find it empty, jobs enqueued meanwhile end up ahead of
    older ones, a crash halfway loses the rest, and an empty queue is a 500.
    Here the queue stays in place and each gone id leaves it by an LREM."""
    connection = current_app.redis_conn  # the dashboard's own client (`setup_rq_connection`)
    key = ServiceQueue(queue_name, connection=connection).key
    ids = connection.lrange(key, 0, -1)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.exists(ServiceJob.key_for(as_text(job_id)))
        found = pipe.execute()
    gone = {job_id for job_id, exists in zip(ids, found) if not exists}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in gone:
            pipe.lrem(key, 0, job_id)
        pipe.execute()
    return {"status": "OK", "removed": len(gone)}


def scope(req: Request) -> str | None:
    """Every dashboard page needs the `admin` scope; None outside the dashboard."""
    return "admin" if req.blueprint == BLUEPRINT else None


def _dashboard_redis_url(settings: Settings) -> str:
    """The dashboard opens its own clients from a URL, so TLS options go in it."""
    url = settings.redis_url
    if url.startswith("rediss://") and not settings.redis_tls_verify:
        parts = urlsplit(url)
        query = "&".join(filter(None, [parts.query, urlencode({"ssl_cert_reqs": "none"})]))
        url = urlunsplit(parts._replace(query=query))
    return url
