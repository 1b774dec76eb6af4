"""gunicorn's settings for the web process; gunicorn reads this file from the
working directory, so the Procfile line stays `gunicorn "service:create_app()"`.

`PORT` and `WEB_CONCURRENCY` are honoured by gunicorn itself.
"""
import os

# gunicorn's control socket defaults to one path per user, which two servers on
# one machine (make run beside the tests) would fight over; nothing here uses it.
control_socket_disable = True

# Threads, so a client following a job (long poll, Server-Sent Events) holds a
# thread, not a whole worker process.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))

# gunicorn's own lines (boot, worker exits) as JSON, like the rest of the logs.
if os.environ.get("LOG_FORMAT", "json") == "json":
    logconfig_dict = {
        "formatters": {"generic": {"()": "service.logs.json_formatter", "process": "web"}},
        # The app adds its own handler to the root logger (service.logs): one line each.
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
