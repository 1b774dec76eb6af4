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
