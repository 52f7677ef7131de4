"""`python -m tests.cluster.hung_closing`: a production instance (`relay.serve`) whose closing commits never come.

Test-only: every run settles in the ledger and answers, then its closing transaction waits
forever, so a test can kill the process between the answer and the commit
(tests/cluster/test_sigkill.py).
"""

from __future__ import annotations

import asyncio
import os


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
    import django

    django.setup()
    from agents.actions import runs
    from relay import serve

    async def never(closing):
        await asyncio.Event().wait()

    runs.commit_run = never
    serve.main()


if __name__ == "__main__":
    main()
