"""The job functions the service may run, one module a domain.

A job is a public function defined in a module of this package; its name is
`<module>.<function>` (`demo.add`). Every function here stays a plain function,
callable without RQ, and nothing here imports the web service. Modules whose
names start with `_` hold helpers for job authors, not jobs:

    from jobs import defaults, progress
"""
from ._defaults import defaults
from ._progress import progress

__all__ = ["defaults", "progress"]
