"""What keeps a request on the event loop under ASGI (docs/design.md section 11).

Django runs sync code, and every hook of a sync-only middleware, on one shared thread per
process; under load every request would queue there. This package holds Relay's ways around it:

- `middleware`: the one dual-mode middleware base every Relay middleware uses (sync under WSGI,
  async under ASGI, never a hop), and the request size limit;
- `inline`: Django's own middleware with their hooks run on the loop;
- `handler`: the ASGI handler that starts no thread per request for async views and bounds bodies;
- `caches`: one cache backend per thread, not one built per request;
- `static`: WhiteNoise with only static requests leaving the loop;
- `db`: `run_db`, ORM work on a bounded pool of threads;
- `group_commit`: concurrent requests' writes committed in one transaction;
- `wait_for`: Python 3.12's asyncio.wait_for on 3.11, so that a cancelled run stays cancelled.

Where these rely on Django's or WhiteNoise's internals, tests/test_eventloop_internals.py
exercises each relied-on behaviour by name.
"""
