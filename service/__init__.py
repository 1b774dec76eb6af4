"""The RQ Job Service: background jobs over HTTP.

`create_app()` is what gunicorn runs (`gunicorn "service:create_app()"`). Flask is
imported only when it is called, so the worker and the scheduler can use
`service.settings`, `service.connection` and `service.queues` without a web app.
"""


def create_app(*args, **kwargs):
    """Build the web application; see `service.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
