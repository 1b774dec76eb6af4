"""gunicorn's settings for the web process; gunicorn reads this file from the
working directory, so the Procfile line stays `gunicorn "service:create_app()"`.

`PORT` and `WEB_CONCURRENCY` are honoured by gunicorn itself.
"""
import gc
import os

# The app is loaded once, in this (master) process, and the web workers are forked
# from it, so they share its code and objects instead of each importing its own
# copy (about 45 MB of private memory, USS, per worker becomes about 11). Modules that
# take `threading.Lock` or `socket` at import must see gevent's, so the master
# patches before anything else is imported; the workers then run on the same
# patched modules. Each worker still gets its own Redis connections: redis-py and
# the enqueue batcher open new ones when they find themselves in a new process.
import gevent
from gevent import monkey

monkey.patch_all()

from gunicorn.glogging import Logger  # noqa: E402

preload_app = True

# gunicorn's control socket defaults to one path per user, which two servers on
# one machine (make run beside the tests) would fight over; nothing here uses it.
control_socket_disable = True

# gevent: a request waiting on Redis (an enqueue, a long poll, an event
# stream) yields to the others instead of holding a thread, so one process
# serves many clients following jobs, and a request costs no thread switches.
# gunicorn applies gevent's monkey patching before it loads the app.
worker_class = "gevent"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))


class _AppLogsRequests(Logger):
    """gunicorn's logger without its access log: the app logs every request
    itself (`http.request`, with its duration and job), so gunicorn need not
    build a line per request only to drop it."""

    access_log_enabled = False


logger_class = _AppLogsRequests

# gunicorn's own lines (boot, worker exits) as JSON, like the rest of the logs.
if os.environ.get("LOG_FORMAT", "json") == "json":
    logconfig_dict = {
        "formatters": {"generic": {"()": "service.logs.json_formatter", "process": "web"}},
        # The app adds its own handler to the root logger (service.logs): one line each.
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        },
    }


def when_ready(server):
    """Move the loaded app's objects (Flask, pydantic's schemas, the job registry:
    most of the heap, and never garbage) out of the collector's sight, once,
    before the first worker is forked. A full collection then walks only what
    requests allocate, instead of pausing every request in flight for
    milliseconds now and then; and it never writes to those objects' pages,
    which stay shared with the master instead of being copied into every worker."""
    gc.freeze()


def post_worker_init(worker):
    """A worker about to serve. A HUP has the master set gunicorn's logging up
    again (`logconfig_dict` above), which takes away the handler the app added
    to the root logger when it loaded; the app is not loaded again, so each
    worker puts it back (`logs.setup` adds it only where it is missing). Then
    what the worker allocated while starting (gevent's hub) is frozen too."""
    from service import logs
    from service.settings import Settings

    logs.setup("web", Settings.from_env())
    gc.freeze()


def post_request(worker, req, environ, resp):
    """Let the other connections have a turn after each request. A keep-alive
    client whose next request is already there is otherwise served again and
    again without the greenlet ever blocking, and the rest wait: a /health
    probe could wait most of a second behind a busy client."""
    gevent.sleep(0)
