"""Benchmark: building a training dataset of 100,000 interactions, in bounded memory.

    python bench/training_build.py [--interactions 100000]      (DATABASE_URL honoured)

Runs in a throwaway database (Django's test database, created and dropped here), bulk-inserts
the interactions (conversations of two turns, some answers regenerated, texts with e-mail
addresses, phone numbers and near duplicates in them), then runs `manage.py build_dataset` in a
child process and reports its peak resident memory (ru_maxrss of the child) and wall time.
Target: peak < 300 MB. The last line is one JSON object.
"""

import argparse
import datetime as dt
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay.settings")
TARGET_MB = 300
WORDS = [f"{stem}{n}" for stem in ("alpha", "delta", "sigma", "omega", "kappa") for n in range(400)]


def setup_database():
    import django
    from django.conf import settings

    django.setup()
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database["TEST"]["NAME"] = str(ROOT / "var" / "bench-training.sqlite3")
    else:
        database["TEST"]["NAME"] = f"bench_training_{os.getpid()}"
    from django.db import connection

    old_name = database["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    return connection, old_name


def text(rng: random.Random, words: int) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    extra = rng.random()
    if extra < 0.05:
        body += f" write to user{rng.randint(1, 999)}@example.com"
    elif extra < 0.08:
        body += f" or call +1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    return body


def populate(interactions: int) -> tuple[int, float]:
    """(dataset id, seconds to insert): two turns per conversation, every tenth answer regenerated."""
    from accounts.actions.organizations import create_organization
    from accounts.actions.users import create_user
    from agents.models import Conversation, Message
    from training.actions.consent import set_consent
    from training.models import Dataset

    org = create_organization("Bench Training")
    users = [create_user(f"trainer{i}", organization=org, role="user") for i in range(20)]
    set_consent(org, enabled=True, actor=None)
    rng, start = random.Random(21), dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    started, made, previous = time.perf_counter(), 0, None
    while made < interactions:
        conversations, messages = [], []
        for _ in range(min(2000, interactions - made)):
            conv = Conversation(id=uuid.uuid4(), organization=org, user=rng.choice(users), agent="general")
            conversations.append(conv)
            parent, at = None, start + dt.timedelta(seconds=made)
            for _turn in range(2):
                if made >= interactions:
                    break
                question_text, answer_text = text(rng, rng.randint(8, 30)), text(rng, rng.randint(30, 90))
                if rng.random() < 0.02 and previous:  # a near duplicate of an earlier interaction
                    changed = previous[1].split()
                    changed[len(changed) // 2] = "changed"
                    question_text, answer_text = previous[0], " ".join(changed)
                previous = question_text, answer_text
                question = Message(id=uuid.uuid4(), conversation=conv, role="user", parent=parent,
                                   content=question_text, created_at=at)
                answer = Message(id=uuid.uuid4(), conversation=conv, role="assistant", parent=question,
                                 content=answer_text, agent="general", model="bench-model",
                                 quality_score=round(rng.random(), 3), feedback=rng.choice([None, None, 1, -1]),
                                 created_at=at + dt.timedelta(seconds=1),
                                 tool_calls=[{"call_id": f"call_{made}", "name": "search", "input": {"q": "x"},
                                              "output": "found", "ok": True}] if rng.random() < 0.1 else [])
                messages += [question, answer]
                made += 1
                if rng.random() < 0.1 and made < interactions:  # a regenerated answer
                    messages.append(Message(id=uuid.uuid4(), conversation=conv, role="assistant", parent=question,
                                            content=text(rng, 40), agent="general", model="bench-model",
                                            quality_score=round(rng.random(), 3),
                                            created_at=at + dt.timedelta(seconds=2)))
                    made += 1
                parent, at = answer, at + dt.timedelta(seconds=5)
        Conversation.objects.bulk_create(conversations, batch_size=2000)
        Message.objects.bulk_create(messages, batch_size=5000)
    dataset = Dataset.objects.create(organization=org, name="bench")
    return dataset.pk, time.perf_counter() - started


def database_url(connection) -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--interactions", type=int, default=100_000)
    args = parser.parse_args()
    connection, old_name = setup_database()
    try:
        dataset_id, insert_seconds = populate(args.interactions)
        with connection.cursor() as cursor:  # the statistics autovacuum would have gathered by now
            cursor.execute("ANALYZE")
        print(f"inserted {args.interactions} interactions in {insert_seconds:.1f} s", flush=True)
        with tempfile.TemporaryDirectory(prefix="relay-training-bench-") as directory:
            env = {**os.environ, "DATABASE_URL": database_url(connection), "RELAY_TRAINING_DIR": directory}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "manage.py", "build_dataset", str(dataset_id)], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        summary = done.stdout.strip().splitlines()
        print("\n".join(summary[-3:]))
        rows = int(re.search(r"rows (\d+)", done.stdout).group(1))
        print(json.dumps({"interactions": args.interactions, "rows": rows, "build_seconds": round(seconds, 1),
                          "peak_rss_mb": round(peak_mb, 1), "target_mb": TARGET_MB, "meets_target": peak_mb < TARGET_MB,
                          "insert_seconds": round(insert_seconds, 1),
                          "database": connection.vendor}))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
