"""``-P/--processes N``: one command, N podyn processes sharing the tables' work units as separate hosts would.

The parent starts N copies of the same command (``python -m podyn_py`` with the same arguments and ``-P 1``), each
a full podyn that claims segments and shards by lease (see ``units.py``), so one command uses N cores. The parent
only supervises: it passes SIGTERM/SIGINT on to every child, waits for them all, and exits with the worst of their
exit codes. A child killed outright (kill -9, the OOM killer) loses nothing: its leases expire and the others take
its units over; the parent reports it and exits non-zero once the others are done.

The children run in a process group of their own, so that a Ctrl-C at the terminal reaches them once, through the
parent (in the terminal's group they got it twice, and a second SIGINT means "stop at once"); on Linux each also
gets SIGTERM when the parent dies, so that a parent killed outright leaves no podyn running unsupervised.

For ``--verify`` (``one_report``) every child prints the whole report, assembled from the results they all
committed; the parent prints one of them (a complete one if any child completed) instead of N copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType

log = logging.getLogger(__name__)

#: The environment variable that gives every process of one command the command's start (a --reload started by
#: one of them is joined by the others, not started over).
RUN_STARTED_ENV = "PODYN_RUN_STARTED"
#: The environment variable that gives every process of one command a name of its own (a --verify run of the
#: command's processes, shared by them and nobody else).
RUN_NAME_ENV = "PODYN_RUN_NAME"
#: The environment variable that tells a child its index (0 … N-1): its metrics port is ``--metrics-port`` + index.
PROCESS_INDEX_ENV = "PODYN_PROCESS_INDEX"

_PROCESS_OPTIONS = ("-P", "--processes")


def child_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` without its -P/--processes option (in any of click's spellings), with ``-P 1`` instead."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg in _PROCESS_OPTIONS:
            skip = True
            continue
        if arg.startswith("--processes=") or (arg.startswith("-P") and not arg.startswith("--")):
            continue
        out.append(arg)
    return [*out, "-P", "1"]


def run_processes(count: int, argv: Sequence[str], *, one_report: bool = False) -> int:
    """Run ``count`` copies of this command and wait for them; the exit code to give. ``one_report``: the
    children's standard output is collected, and one child's printed at the end (see the module's docstring)."""
    env = dict(os.environ)
    env[RUN_STARTED_ENV] = datetime.now(UTC).isoformat()
    env[RUN_NAME_ENV] = f"-P {secrets.token_hex(6)}"
    arguments = child_arguments(argv)
    children: list[subprocess.Popen[bytes]] = []
    outputs: list[bytearray] = []
    readers: list[threading.Thread] = []
    for index in range(count):
        env[PROCESS_INDEX_ENV] = str(index)
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "podyn_py", *arguments],
                env=dict(env),
                process_group=0,
                preexec_fn=_stop_with_parent,
                stdout=subprocess.PIPE if one_report else None,
            )
        )
        if one_report:
            outputs.append(bytearray())
            readers.append(threading.Thread(target=_collect, args=(children[-1], outputs[-1]), daemon=True))
            readers[-1].start()
    log.info("started %d podyn processes (pids %s)", count, ", ".join(str(c.pid) for c in children))
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes: dict[int, int] = {}
        while len(codes) < len(children):
            for child in children:
                if child.pid in codes:
                    continue
                code = child.poll()
                if code is None:
                    continue
                codes[child.pid] = code
                if code != 0:
                    how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with {code}"
                    log.warning(
                        "podyn process %d of %d (pid %d) %s; the others go on with its work units",
                        children.index(child) + 1,
                        count,
                        child.pid,
                        how,
                    )
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if one_report:
        for reader in readers:
            reader.join()
        sys.stdout.buffer.write(
            chosen_output([(codes[c.pid], bytes(o)) for c, o in zip(children, outputs, strict=True)])
        )
        sys.stdout.flush()
    return worst_exit_code(list(codes.values()))


def _collect(child: subprocess.Popen[bytes], into: bytearray) -> None:
    assert child.stdout is not None
    while chunk := os.read(child.stdout.fileno(), 65536):
        into.extend(chunk)


def chosen_output(results: Sequence[tuple[int, bytes]]) -> bytes:
    """Of the children's (exit code, output), the output to print: the first child's that completed (0, or 4:
    differences found), else the first that printed anything (an interrupted run's partial report)."""
    printed = [(code, output) for code, output in results if output]
    complete = [output for code, output in printed if code in (0, 4)]
    if complete:
        return complete[0]
    return printed[0][1] if printed else b""


#: prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def worst_exit_code(codes: Sequence[int]) -> int:
    """The exit code of the command: 0 if every process gave 0; a process killed by a signal counts as 1;
    otherwise the highest (3: a table stopped, over 1: an error before any table ran)."""
    worst = 0
    for code in codes:
        worst = max(worst, 1 if code < 0 else code)
    return worst
