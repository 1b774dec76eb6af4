"""The no-op job of the plain RQ baselines, in a module that imports nothing.

`jobs.demo.add` is the same function, but `jobs.demo` imports pydantic (for
its bounds), and plain `rq worker` imports a job's module afresh in each
work-horse it forks: about 75 ms a job that would be the module's cost, not
RQ's. The service's worker imports its job modules once, before it forks.
"""


def add(a: int, b: int) -> int:
    return a + b
