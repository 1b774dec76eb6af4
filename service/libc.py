"""The C library, for what Python's standard library does not offer: a signal
when the parent process dies (Linux), and `putenv` with a string of our own.

Found from the symbols this process has loaded already, not with
`ctypes.util.find_library`, which runs `ldconfig` (milliseconds, at every
start of a process that asks).
"""
from __future__ import annotations

import ctypes
import os

try:
    LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    LIBC = None

#: `putenv(3)`, which keeps the string it is given (no copy); None if absent.
PUTENV = getattr(LIBC, "putenv", None)
if PUTENV is not None:
    PUTENV.argtypes, PUTENV.restype = [ctypes.c_char_p], ctypes.c_int

_PR_SET_PDEATHSIG = 1


def signal_when_parent_dies(signal_number: int, parent: int) -> None:
    """Have the kernel send this process `signal_number` when its parent (pid
    `parent`) dies (Linux; elsewhere nothing, and the caller checks), and send
    it now if the parent has died already: the kernel sends nothing for a
    parent gone before the call, whose child has another parent by then."""
    try:
        LIBC.prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0)
    except AttributeError:  # no C library, or no prctl (not Linux)
        pass
    if os.getppid() != parent:
        os.kill(os.getpid(), signal_number)
