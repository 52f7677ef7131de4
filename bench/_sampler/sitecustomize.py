"""CPU sampling for bench/cpu_profile.py, loaded only into the sampled `relay.serve` process (PYTHONPATH).

With RELAY_SAMPLE_DIR set, a `relay.serve` process (and no other: an interval timer survives exec,
and a child that does not handle its signal dies of it) has the kernel send it SIGPROF at every
0.2 ms asked (the kernel's tick decides the real period: 4 ms at HZ=250) of the process's CPU
time. Python runs the handler on the main thread, the event loop's, between two bytecodes: it
counts the stack that thread is running (file:function, outermost first). SIGUSR2 ends a phase:
its counts and the process's CPU seconds since the last phase go to
RELAY_SAMPLE_DIR/samples-<pid>-<phase>.json, and counting starts again; so does exit. Each sample
stands for cpu_s / samples of CPU. CPU another thread used is charged to whatever the loop runs
next; the model call's path runs on the loop. Not for production: a stack walk per tick.
"""

import os
import sys

if os.environ.get("RELAY_SAMPLE_DIR") and "relay.serve" in getattr(sys, "orig_argv", ()):
    import atexit
    import collections
    import json
    import signal
    import time

    _COUNTS = collections.Counter()
    _PHASE = {"number": 0, "cpu_s": time.process_time()}
    _ROOT = os.getcwd() + os.sep
    _STDLIB = os.path.dirname(os.__file__) + os.sep

    def where(code) -> str:
        path = code.co_filename
        if "site-packages" + os.sep in path:
            path = path.rsplit("site-packages" + os.sep, 1)[1]
        elif path.startswith(_ROOT):
            path = path[len(_ROOT):]
        elif path.startswith(_STDLIB):
            path = "stdlib/" + path[len(_STDLIB):]
        return f"{path}:{code.co_name}"

    def _sample(_signum, frame):
        stack = []
        while frame is not None and len(stack) < 120:
            stack.append(where(frame.f_code))
            frame = frame.f_back
        _COUNTS[tuple(reversed(stack))] += 1

    def _write_phase(*_):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF})  # no sample while the counts are read
        now = time.process_time()
        stacks, cpu_s = [[list(k), v] for k, v in _COUNTS.items()], now - _PHASE["cpu_s"]
        _COUNTS.clear()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPROF})
        _PHASE["number"] += 1
        path = os.path.join(os.environ["RELAY_SAMPLE_DIR"], f"samples-{os.getpid()}-{_PHASE['number']}.json")
        with open(path + ".part", "w") as out:
            json.dump({"cpu_s": cpu_s, "stacks": stacks}, out)
        os.replace(path + ".part", path)  # whole, for the reader waiting for it
        _PHASE["cpu_s"] = time.process_time()  # writing the file is not the next phase's

    def _at_exit():
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        _write_phase()

    signal.signal(signal.SIGPROF, _sample)
    signal.signal(signal.SIGUSR2, _write_phase)
    signal.setitimer(signal.ITIMER_PROF, 0.0002, 0.0002)
    atexit.register(_at_exit)
