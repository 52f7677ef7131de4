"""Span tracing for bench/idle_spans.py, loaded only into the traced Relay process (PYTHONPATH).

RELAY_SPANS names the functions to time, `module:attribute.path` separated by commas. Once Django
is set up, each is replaced by a wrapper that notes (time, thread, name, B/E, the thread's CPU
time) when it begins and ends (an async generator also notes its first item, Y), in its module and
wherever another module imported it by name. At exit the notes go to RELAY_SPANS_DIR/spans-<pid>.json.
Not for production: every call of a traced function costs a few microseconds more.
"""

import os

if os.environ.get("RELAY_SPANS"):
    import atexit
    import functools
    import importlib
    import inspect
    import json
    import sys
    import threading
    import time

    NOTES = []
    _now, _cpu = time.perf_counter_ns, time.thread_time_ns

    def _note(name, kind):
        NOTES.append((_now(), threading.get_ident(), name, kind, _cpu()))

    def _wrap(name, fn):
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def generator(*args, **kwargs):
                _note(name, "B")
                first = True
                try:
                    async for item in fn(*args, **kwargs):
                        if first:
                            _note(name, "Y")
                            first = False
                        yield item
                finally:
                    _note(name, "E")
            return generator
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def coroutine(*args, **kwargs):
                _note(name, "B")
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _note(name, "E")
            return coroutine

        @functools.wraps(fn)
        def function(*args, **kwargs):
            _note(name, "B")
            try:
                return fn(*args, **kwargs)
            finally:
                _note(name, "E")
        return function

    def _install():
        for target in filter(None, os.environ["RELAY_SPANS"].split(",")):
            module_name, _, path = target.partition(":")
            try:
                owner = importlib.import_module(module_name)
                *parents, attribute = path.split(".")
                for part in parents:
                    owner = getattr(owner, part)
                original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
            except (ImportError, AttributeError, KeyError) as missing:
                print(f"idle_spans: no {target} ({missing!r}); not traced", file=sys.stderr)
                continue
            wrapped = _wrap(path, original)
            setattr(owner, attribute, wrapped)
            if not isinstance(owner, type):  # `from module import name` copies too
                for module in list(sys.modules.values()):
                    names = getattr(module, "__dict__", {})
                    for name, value in list(names.items()):
                        if value is original:
                            names[name] = wrapped

    import django

    _setup = django.setup

    def setup(*args, **kwargs):
        _setup(*args, **kwargs)
        _install()

    django.setup = setup

    def _dump():
        with open(os.path.join(os.environ.get("RELAY_SPANS_DIR", "."), f"spans-{os.getpid()}.json"), "w") as out:
            json.dump(NOTES, out)

    atexit.register(_dump)
