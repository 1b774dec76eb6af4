"""What every benchmark shares: a Redis of its own, processes started and stopped
on loopback, wrk, Redis's own counters, process memory, and the report.

Each benchmark measures the service and its baselines in the same run, several
rounds, interleaved, and prints the median of each figure, its spread (lowest to
highest) and the ratio to the baseline (the median of the per-round ratios), so
that a noisy machine moves both sides of a ratio alike.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
#: Everything a run writes (Redis data, logs, the Celery virtualenv) lives here.
VAR = ROOT / "var" / "bench"
PYTHON = sys.executable
BIN = Path(PYTHON).parent

if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/, not the root, on the path
    sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402

from service.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

# A benchmark stopped with SIGTERM still stops the servers and workers it started.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

#: The API token the benchmarks' clients send (every scope).
TOKEN = "bench-token-0123456789abcdef"
#: Rate limits that apply to every request but never refuse one at benchmark speed:
#: the counting costs what it costs in production, and no answer is a cheap 429.
UNREACHED_LIMIT = "100000000 per minute"
#: The no-op job every benchmark runs (`jobs.demo.add`; plain RQ runs the same function from `_noop`).
NOOP_JOB = {"job": "demo.add", "args": [1, 2]}


# --- arguments and the report ------------------------------------------------


def arguments(description: str, rounds: int = 3, **extra: tuple[type, object, str]) -> argparse.Namespace:
    """`--rounds` and the benchmark's own options (`name=(type, default, help)`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds to take medians over (default {rounds})")
    for name, (kind, default, help_text) in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=f"{help_text} (default {default})")
    return parser.parse_args()


@dataclass
class Figure:
    """One quantity measured over several rounds."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def show(self, digits: int = 0, unit: str = "") -> str:
        if not self.values:
            return "n/a"
        def fmt(v: float) -> str:
            return f"{v:,.{digits}f}"
        spread = f" ({fmt(min(self.values))}–{fmt(max(self.values))})" if len(self.values) > 1 else ""
        return f"{fmt(self.median)}{unit}{spread}"


def header(title: str, *notes: str) -> None:
    print(f"\n== {title} ==", flush=True)
    for note in notes:
        print(f"   {note}", flush=True)


def table(headers: list[str], rows: Iterable[list[str]]) -> None:
    rows = [list(map(str, row)) for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    sys.stdout.flush()


def verdict(name: str, reached: float | None, target: str, ok: bool | None) -> str:
    mark = "n/a" if ok is None else ("met" if ok else "NOT met")
    shown = "n/a" if reached is None else f"{reached:.2f}"
    return f"{name}: {shown} (target {target}) {mark}"


def log(message: str) -> None:
    print(f"   … {message}", file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------


def workdir(name: str) -> Path:
    """A fresh directory for one benchmark's Redis data and logs."""
    path = VAR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass
class RedisServer:
    url: str
    client: Redis
    pid: int

    def reset(self) -> None:
        """Empty the database and zero Redis's command counters."""
        self.client.flushall()
        self.client.config_resetstat()

    def commands(self) -> dict[str, int]:
        """Calls of each command since the last reset (INFO commandstats)."""
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}

    def cpu_seconds(self) -> float:
        """CPU time the Redis server has used, user and system."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A Redis of the benchmark's own on loopback (the service's embedded Redis)."""
    server = EmbeddedRedis(directory / "redis")
    url = server.start()
    client = Redis.from_url(url)
    try:
        yield RedisServer(url, client, server.process.pid)  # type: ignore[union-attr]
    finally:
        client.close()
        server.stop()


def service_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a service process: its Redis, the benchmark token, limits
    high enough to count every request but refuse none, this venv's tools first."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "API_TOKENS": TOKEN,
        "RATE_LIMIT_PER_TOKEN": UNREACHED_LIMIT,
        "RATE_LIMIT_PER_IP": UNREACHED_LIMIT,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


@contextlib.contextmanager
def started(command: list[str], *, env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """Run `command` (in a session of its own) until the block ends."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL to the process group it leads (forked children too)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_get_ok(url: str) -> bool:
    host, _, rest = url.removeprefix("http://").partition("/")
    connection = http.client.HTTPConnection(host, timeout=2)
    try:
        connection.request("GET", "/" + rest)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def gunicorn(app: str, *, env: dict[str, str], log_path: Path, pythonpath: str | None = None,
             ready_path: str = "/health", options: Sequence[str] = (), cwd: Path = ROOT,
             ) -> Iterator[tuple[str, subprocess.Popen]]:
    """gunicorn serving `app`, by default from the project root so that
    `gunicorn.conf.py` applies to it exactly as in production (another `cwd`
    leaves it out); yields (base URL, master process)."""
    port = free_port()
    command = [PYTHON, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", *options]
    if pythonpath:
        command += ["--pythonpath", pythonpath]
    with started(command, env=env, log_path=log_path, cwd=cwd) as master:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if master.poll() is not None:
                raise SystemExit(f"gunicorn {app} exited; see {log_path}")
            return http_get_ok(base + ready_path)

        wait_until(up, 60, f"gunicorn {app}")
        yield base, master


#: Web processes of the tutorial baseline, one a core of this 2-core machine.
TUTORIAL_WORKERS = 2


def with_web_workers(env: dict[str, str]) -> dict[str, str]:
    """`env` for the service's web server with as many processes as the tutorial
    has, unless WEB_CONCURRENCY says otherwise."""
    return {**env, "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", str(TUTORIAL_WORKERS))}


def tutorial_gunicorn(*, env: dict[str, str], log_path: Path):
    """`bench/_tutorial_app.py` deployed the tutorial way, `gunicorn -w 2 app:app`
    (`TUTORIAL_WORKERS`): gunicorn's default sync workers, started from bench/ so
    that none of the service's `gunicorn.conf.py` applies."""
    return gunicorn("_tutorial_app:app", env=env, log_path=log_path, options=["--workers", str(TUTORIAL_WORKERS)],
                    cwd=BENCH, pythonpath=str(ROOT))


# --- wrk ---------------------------------------------------------------------

_WRK_REPORT = r"""
done = function(summary, latency, requests)
  io.write(string.format(
    "WRK {\"requests\":%d,\"duration_us\":%d,\"non2xx\":%d,\"errors\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    bad: int  # non-2xx answers and socket errors

    @property
    def ok(self) -> bool:
        return self.bad == 0


def wrk(url: str, *, connections: int, seconds: float, method: str = "GET", body: str | None = None,
        headers: dict[str, str] | None = None, threads: int = 2) -> Load:
    """Run wrk against `url` for `seconds` with `connections` keep-alive clients."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = [==[{body}]==]")
    for name, value in (headers or {}).items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n" + _WRK_REPORT)
    try:
        output = subprocess.run(
            ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
             "--timeout", "5s", "-s", script.name, url],
            capture_output=True, text=True, check=True, timeout=seconds + 30,
        ).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"wrk failed: {error.stderr or error.stdout}") from None
    finally:
        os.unlink(script.name)
    report = json.loads(next(line for line in output.splitlines() if line.startswith("WRK "))[4:])
    return Load(
        requests=report["requests"],
        requests_per_s=report["requests"] / (report["duration_us"] / 1e6),
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        bad=report["non2xx"] + report["errors"],
    )


# --- memory ------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process, in MB (MiB), from /proc."""
    return _proc_kb(f"/proc/{pid}/status", "VmRSS:")


def pss_mb(pid: int) -> float | None:
    """Proportional set size, in MB (MiB): pages shared with other processes (a
    forked child) count in part, so the PSS of related processes adds up."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def pss_total_mb(pids: Iterable[int]) -> float:
    """The PSS of related processes added up: what they use together, shared
    pages counted once (a process already gone counts 0)."""
    return sum(pss_mb(pid) or 0 for pid in pids)


def _proc_kb(path: str, field: str) -> float | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(*pids: int) -> float:
    """CPU time (user + system) the processes have used so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def children(pid: int) -> list[int]:
    """The direct children of a process."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return sorted(found)


# --- the jobs, as each system under test enqueues them -------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def service_enqueuer(redis_url: str):
    """A function that enqueues the no-op job the way the service does (`service.enqueue`)."""
    from service.connection import connect
    from service.enqueue import JobRequest, enqueue, prepare
    from service.queues import job_registry
    from service.settings import Settings

    settings = Settings(redis_url=redis_url)
    connection = connect(settings)
    registry = job_registry()
    request = JobRequest.model_validate(NOOP_JOB)

    def enqueue_one():
        return enqueue(prepare(request, registry=registry, settings=settings), connection)

    return enqueue_one


def plain_rq_enqueuer(redis_url: str):
    """A function that enqueues the no-op job as RQ's documentation does (pickle, `default`)."""
    from rq import Queue

    from _noop import add

    queue = Queue("default", connection=Redis.from_url(redis_url))
    return lambda: queue.enqueue(add, 1, 2)


def rq_worker_command(redis_url: str, *options: str) -> list[str]:
    """Plain `rq worker`, able to import the baselines' job (`_noop`)."""
    return [str(BIN / "rq"), "worker", "--url", redis_url, "--path", str(BENCH), *options]


# --- Celery, the outside baseline, in a virtualenv of its own ----------------

CELERY_VENV = ROOT / "var" / "celery-venv"
CELERY_REQUIREMENT = "celery[redis]>=5.3,<6"


def celery_python() -> tuple[Path | None, str]:
    """The Python of a virtualenv with Celery (made on first use), or None and why not."""
    python = CELERY_VENV / "bin" / "python"
    marker = CELERY_VENV / ".installed"
    if marker.exists():
        return python, "ready"
    log(f"installing {CELERY_REQUIREMENT} into {CELERY_VENV.relative_to(ROOT)} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CELERY_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", CELERY_REQUIREMENT],
                       check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        return None, f"Celery did not install: {str(detail).strip().splitlines()[-1:] or error}"
    marker.touch()
    return python, "ready"


def celery_worker_command(python: Path) -> list[str]:
    """Celery's worker with the solo pool (one process, one task at a time)."""
    return [str(python), "-m", "celery", "-A", "_celery_app", "worker", "-P", "solo", "-c", "1",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle"]


def celery_env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(BENCH), "PYTHONUNBUFFERED": "1"}


def celery_client(python: Path, redis_url: str, *args: str, timeout: float = 600) -> dict:
    """Run `bench/_celery_app.py <args>` in Celery's virtualenv; its JSON answer."""
    output = subprocess.run(
        [str(python), str(BENCH / "_celery_app.py"), *args], env=celery_env(redis_url),
        capture_output=True, text=True, check=True, timeout=timeout,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])
