"""RQ's own writes, sent in one Lua script that runs them only if a condition holds.

The worker records a job's start and its success with RQ's code, queued on a
pipeline that is never executed; its commands become the arguments of a script
that checks, atomically, what RQ would check with WATCH and a read first (is the
job still this worker's to start? has it no dependents to enqueue?). One round
trip instead of three, and the records are RQ's, field for field.
"""
from __future__ import annotations

from redis.client import Pipeline

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
