"""RQ's own writes, sent in one Lua script that runs them only if a condition holds.

The worker records a job's start and its success with RQ's code, queued on a
pipeline that is never executed; its commands become the arguments of a script
that checks, atomically, what RQ would check with WATCH and a read first (is the
job still this worker's to start? has it no dependents to enqueue?). One round
trip instead of three, and the records are RQ's, field for field.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

from hiredis import pack_command
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import DataError, NoScriptError, ResponseError

from .batching import exchange

# Defines run(call, first): runs the commands in ARGV from `first` on (each
# given as its length, then its words) through `call` (redis.call, or
# redis.pcall to ignore their errors).
RUN = """
local function run(call, first)
    local i = first
    while i <= #ARGV do
        local length = tonumber(ARGV[i])
        call(unpack(ARGV, i + 1, i + length))
        i = i + length + 1
    end
end
"""


class PackedScript:
    """A Lua script, called as redis-py's `Script` is (`script(keys=..., args=...)`),
    its words packed by hiredis in C.

    redis-py 8.2 encodes each word of a command in Python before hiredis packs
    it. The scripts that write RQ's records of a job's run carry those records
    field by field, about a hundred words a success, and that encoding came to
    a fifth of the time a worker took to record one. The call goes out on a
    connection of the client's pool as `batching.exchange` sends it (once more
    after a broken connection, as for any command), and loads the script again
    should Redis have lost it.
    """

    def __init__(self, client: Redis, script: str):
        self.client, self.script = client, script
        self.sha = hashlib.sha1(script.encode()).hexdigest()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            packed = pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))
        except TypeError as error:  # a word Redis has no type for (None, a bool), as redis-py says it
            raise DataError(str(error)) from None
        reply = self._send(packed)
        if isinstance(reply, NoScriptError):  # Redis restarted, or its scripts were flushed
            self.client.script_load(self.script)
            reply = self._send(packed)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _send(self, packed: bytes) -> Any:
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            return exchange(conn, packed, 1)[0]
        except BaseException:
            conn.disconnect()  # its reply may still come: no other caller may read it
            raise
        finally:
            pool.release(conn)


def leave_out(pipe: Pipeline, *commands: tuple[str, str]) -> None:
    """Take the commands queued on `pipe` that are given as (name, key) off it:
    writes that change nothing, or that the script makes itself."""
    unwanted = set(commands)
    pipe.command_stack = [(args, options) for args, options in pipe.command_stack if tuple(args[:2]) not in unwanted]


def words(pipe: Pipeline) -> list:
    """The commands queued on `pipe` as script arguments, in the form `RUN` reads
    (redis-py encodes each word as it would have for the command itself)."""
    commands: list[list] = []
    for args, _options in pipe.command_stack:
        previous = commands[-1] if commands else None
        if previous and args[0] == "HSET" == previous[0] and args[1] == previous[1]:
            previous.extend(args[2:])  # RQ sets a status, then saves the record: one HSET
        else:
            commands.append(list(args))
    found: list = []
    for command in commands:
        found.append(len(command))
        found.extend(command)
    return found


#: Seconds a `WrittenOnce` mark is kept: far longer than a resend takes (redis-py
#: sends a command again at once, after a broken connection), or than a second
#: handler of the same run comes after the first (in the same moment).
MARK_TTL = 300

# KEYS: the mark; ARGV: its TTL, then the writes (`RUN`'s form). Runs the
# writes and leaves the mark, unless the mark is there: a call sent again.
# Each write runs whatever the others do, as in the MULTI/EXEC it replaces.
ONCE = RUN + """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then
    return 0
end
run(redis.pcall, 2)
return 1
"""


class WrittenOnce:
    """A Redis client whose transactions are each applied at most once, under one mark.

    RQ writes how a job's run ended (failed, stopped, retried) in one MULTI/EXEC
    that nothing guards: when the connection breaks after Redis ran it, redis-py
    sends it again, and a second result is stored, the worker's counts doubled
    and a retry queued twice. Given to RQ in place of the worker's client for
    that write, this one sends the same commands as `ONCE` (a `PackedScript`
    on the client), with the run's own mark. Anything else is the client's.
    """

    def __init__(self, connection: Redis, once: PackedScript, mark: str):
        self._connection, self._once, self._mark = connection, once, mark

    def __getattr__(self, name: str):
        return getattr(self._connection, name)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = self._connection.pipeline(transaction, shard_hint)
        pipe.execute = lambda raise_on_error=True: self._send(pipe)  # type: ignore[method-assign]
        return pipe

    def _send(self, pipe: Pipeline) -> list:
        commands = words(pipe)
        pipe.reset()
        self._once(keys=[self._mark], args=[MARK_TTL, *commands])
        return []
