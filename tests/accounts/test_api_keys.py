import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from accounts.actions.keys import create_api_key
from accounts.models import APIKey
from tests.conftest import assert_envelope, require_redis

pytestmark = pytest.mark.django_db


def bearer(client, secret):
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_create_shows_the_secret_once_and_lists_never_show_it(users, client_for):
    client = client_for(users["user"])
    created = client.post(reverse("apikey-list"), {"name": "ci", "scopes": ["use_math_agent"]}, format="json")
    assert created.status_code == 201, created.content
    secret = created.json()["key"]
    assert secret.startswith("rk_") and len(secret) >= 3 + 12 + 1 + 43
    assert created.json()["scopes"] == ["use_math_agent"]

    listing = client.get(reverse("apikey-list")).content.decode()
    detail = client.get(reverse("apikey-detail", args=[created.json()["id"]])).content.decode()
    for page in (listing, detail):
        assert secret not in page and secret.split("_", 2)[2] not in page
    me = bearer(client_for(users["user"], "session").__class__(), secret).get(reverse("me"))
    assert me.status_code == 200 and me.json()["permissions"] == ["use_math_agent"]


def test_no_table_holds_the_secret_in_any_form_that_gives_it_back(users):
    secret = create_api_key(users["admin"], "probe").secret
    secret_part = secret.split("_", 2)[2]
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 (table names from introspection)
            for row in cursor.fetchall():
                text = " ".join(str(value) for value in row)
                assert secret not in text and secret_part not in text, f"secret found in {table}"
    stored = APIKey.objects.get(name="probe")
    assert stored.secret_hash != secret and len(stored.secret_hash) == 64


def test_revoke_and_rotate_take_effect_at_once(users, client_for, api_client):
    owner = client_for(users["api_user"])
    created = owner.post(reverse("apikey-list"), {"name": "rotating"}, format="json").json()
    bearer(api_client, created["key"])
    assert api_client.get(reverse("me")).status_code == 200  # now cached

    rotated = owner.post(reverse("apikey-rotate", args=[created["id"]])).json()
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    assert_envelope(api_client.get(reverse("me")), 401, "authentication_failed")
    bearer(api_client, rotated["key"])
    assert api_client.get(reverse("me")).status_code == 200

    revoked = owner.post(reverse("apikey-revoke", args=[created["id"]]))
    assert revoked.json()["revoked_at"] and revoked.json()["is_active"] is False
    error = assert_envelope(api_client.get(reverse("me")), 401, "authentication_failed")
    assert "revoked" in error["message"]
    assert_envelope(owner.post(reverse("apikey-rotate", args=[created["id"]])), 400, "invalid")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer rk_",
        "Bearer rk_short_abc",
        "Bearer rk_AAAAAAAAAAAA_" + "x" * 43,  # well-formed, unknown
        "Bearer rk_AAAAAAAAAAAA_" + "x" * 500,
        "Token rk_AAAAAAAAAAAA_" + "x" * 43,
        "Bearer",
        "Bearer a b",
        "Bearer not-a-jwt",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJl",
        "Bearer ключ",
    ],
)
def test_bad_credentials_get_401_envelopes(users, api_client, header):
    api_client.credentials(HTTP_AUTHORIZATION=header)
    response = api_client.get(reverse("me"))
    assert response.status_code == 401, (header, response.content)
    assert response.json()["error"]["code"] in {"authentication_failed", "not_authenticated", "token_not_valid"}


def test_truncated_expired_and_wrong_header_keys_are_refused(users, api_client):
    secret = create_api_key(users["user"], "k").secret
    assert_envelope(bearer(api_client, secret[:-1]).get(reverse("me")), 401)
    api_client.credentials(HTTP_X_API_KEY=secret)
    assert_envelope(api_client.get(reverse("me")), 401, "not_authenticated")

    expired = create_api_key(users["user"], "old", expires_at=timezone.now() + timedelta(seconds=60))
    APIKey.objects.filter(pk=expired.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    error = assert_envelope(bearer(api_client, expired.secret).get(reverse("me")), 401)
    assert "expired" in error["message"]


def test_a_key_cannot_get_more_than_its_owner(users, client_for):
    viewer = client_for(users["viewer"])
    before = APIKey.objects.count()
    # Asking for more than the owner holds is a privilege refusal: 403, audited as denied.
    for body in ({"name": "x", "scopes": ["manage_users"]}, {"name": "x", "allowed_agents": ["math"]}):
        assert_envelope(viewer.post(reverse("apikey-list"), body, format="json"), 403, "permission_denied")
    for body in (
        {"name": "x", "scopes": ["no_such_permission"]},
        {"name": "x", "allowed_agents": ["skynet"]},
        {"name": "x", "owner": users["admin"].pk},
        {"name": "x", "allowed_ips": ["999.1.1.1/8"]},
        {"name": "", "scopes": []},
        {"name": "x", "scopes": "view_metrics"},
        {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},
    ):
        response = viewer.post(reverse("apikey-list"), body, format="json")
        assert_envelope(response, 400, "invalid")
    assert APIKey.objects.count() == before


def test_a_key_can_only_mint_keys_within_its_own_scopes(users, api_client):
    narrow = create_api_key(users["admin"], "narrow", scopes=["view_metrics"]).secret
    bearer(api_client, narrow)
    assert_envelope(api_client.post(reverse("apikey-list"), {"name": "wider", "scopes": ["manage_users"]},
                                    format="json"), 403, "permission_denied")
    minted = api_client.post(reverse("apikey-list"), {"name": "same"}, format="json")
    assert minted.status_code == 201 and minted.json()["scopes"] == ["view_metrics"]


def test_keys_of_others_are_invisible(users, client_for):
    theirs = create_api_key(users["admin"], "admin's").key
    client = client_for(users["user"])
    assert all(k["id"] != theirs.pk for k in client.get(reverse("apikey-list")).json()["results"])
    assert_envelope(client.get(reverse("apikey-detail", args=[theirs.pk])), 404, "not_found")
    assert_envelope(client.post(reverse("apikey-revoke", args=[theirs.pk])), 404, "not_found")
    assert_envelope(client.post(reverse("apikey-rotate", args=[theirs.pk])), 404, "not_found")
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_allowed_ip_ranges(users, api_client):
    secret = create_api_key(users["user"], "office", allowed_ips=["10.0.0.0/8"]).secret
    error = assert_envelope(bearer(api_client, secret).get(reverse("me")), 401)
    assert "address" in error["message"]
    assert bearer(api_client, secret).get(reverse("me"), REMOTE_ADDR="10.1.2.3").status_code == 200


def test_requests_per_minute_limit_answers_429_with_retry_after(users, api_client):
    secret = create_api_key(users["user"], "slow", requests_per_minute=3).secret
    bearer(api_client, secret)
    assert [api_client.get(reverse("me")).status_code for _ in range(3)] == [200, 200, 200]
    response = api_client.get(reverse("me"))
    assert_envelope(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60


def test_last_used_is_written_at_most_once_a_minute(users, api_client, django_assert_max_num_queries):
    issued = create_api_key(users["user"], "k")
    bearer(api_client, issued.secret).get(reverse("me"))
    first = APIKey.objects.get(pk=issued.key.pk).last_used_at
    assert first is not None
    api_client.get(reverse("me"))
    assert APIKey.objects.get(pk=issued.key.pk).last_used_at == first


def test_revocation_is_seen_by_another_process_at_once(users, api_client, transactional_db):
    """Two processes share the Redis key cache: a revoke in one is refused in the other."""
    require_redis()
    issued = create_api_key(users["user"], "shared")
    assert bearer(api_client, issued.secret).get(reverse("me")).status_code == 200  # cached here
    db = settings.DATABASES["default"]
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    script = ("from accounts.models import APIKey; from accounts.actions.keys import revoke_api_key; "
              f"revoke_api_key(APIKey.objects.get(pk={issued.key.pk}))")
    subprocess.run([sys.executable, "manage.py", "shell", "-c", script], check=True, env=env,
                   cwd=settings.BASE_DIR, capture_output=True, timeout=60)
    assert_envelope(api_client.get(reverse("me")), 401, "authentication_failed")


@pytest.mark.django_db(transaction=True)
def test_a_key_read_while_its_owner_or_limits_change_is_not_cached_as_it_was(users):
    # Control: accounts/signals.py drops the cached key again once the change commits. A request
    # between the signal and the commit reads the committed (old) row; without the second drop it
    # stayed cached, still active and still wide, for the key cache's whole lifetime.
    import threading

    from django.db import connections, transaction

    from accounts import key_tree
    from accounts.actions.keys import save_api_key
    from accounts.actions.users import update_user
    from accounts.services import KeyRejected, authenticate_key
    from tests.conftest import require_postgres

    require_postgres()  # two connections that do not see each other's open transaction

    def read_meanwhile(secret):
        def read():
            try:
                authenticate_key(secret, client_ip="127.0.0.1")
            finally:
                connections.close_all()
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive(), "the reader waited for the open transaction"

    narrowed, owned = create_api_key(users["user"], "narrowed"), create_api_key(users["user"], "owned")
    for issued in (narrowed, owned):  # used a moment ago: the reader below does not wait to write last_used_at
        authenticate_key(issued.secret, client_ip="127.0.0.1")
    with transaction.atomic():
        key = APIKey.objects.get(pk=narrowed.key.pk)
        key.allowed_models = ["local-large"]
        save_api_key(key)
        read_meanwhile(narrowed.secret)
    assert not key_tree.permits(authenticate_key(narrowed.secret, client_ip="127.0.0.1"), "allowed_models",
                                "local-mini")

    with transaction.atomic():
        update_user(users["admin"], users["user"], is_active=False)
        read_meanwhile(owned.secret)
    with pytest.raises(KeyRejected):
        authenticate_key(owned.secret, client_ip="127.0.0.1")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("slot", ["empty", "creation's marker"])
def test_a_key_read_before_its_revocation_and_cached_after_it_stays_revoked(users, monkeypatch, slot):
    # Control: accounts.services.forget_cached_key leaves a marker that _lookup's writes cannot
    # replace: set-if-absent over an empty slot, compare-and-set over the marker the reader saw
    # (`creation's marker`: the key's creation committed, so a reader may replace that marker).
    # A request that read the row before the revocation committed and wrote its copy after both
    # forgets cached the key as active for the key cache's whole lifetime.
    import threading

    from django.core.cache import cache
    from django.db import connections

    from accounts import services
    from accounts.actions.keys import revoke_api_key
    from accounts.services import KeyRejected, authenticate_key
    from tests.conftest import require_postgres

    require_postgres()  # a reader thread beside the test's own connection
    issued = create_api_key(users["user"], "revoked meanwhile")
    if slot == "empty":
        cache.delete(services.key_cache_key(issued.key.prefix))
    else:
        require_redis()  # the compare-and-set is Redis's (relay.redis_cache.replace_if)
        assert cache.get(services.key_cache_key(issued.key.prefix)).startswith("forgotten:")
    read, revoked = threading.Event(), threading.Event()
    reader_thread = []
    compute = services.effective_permissions

    def read_then_wait(user):
        if threading.current_thread() in reader_thread:
            read.set()  # the row is read: the revocation commits before the copy is written
            assert revoked.wait(30)
        return compute(user)

    monkeypatch.setattr(services, "effective_permissions", read_then_wait)

    def use():
        try:
            authenticate_key(issued.secret, client_ip="127.0.0.1")
        finally:
            connections.close_all()

    reader = threading.Thread(target=use)
    reader_thread.append(reader)
    reader.start()
    assert read.wait(30)
    revoke_api_key(APIKey.objects.get(pk=issued.key.pk))
    revoked.set()
    reader.join(timeout=30)
    assert not reader.is_alive()
    with pytest.raises(KeyRejected):
        authenticate_key(issued.secret, client_ip="127.0.0.1")


@pytest.mark.django_db(transaction=True)
def test_a_new_or_changed_key_is_read_from_the_database_once_then_from_the_cache(users):
    # Control: the marker written once a change commits (`forgotten:<nonce>`) may be replaced by a
    # copy read after it. With only the first marker, a new key, and any key after a change, was
    # read from the database on every use for the marker's 30 seconds.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.actions.keys import save_api_key
    from accounts.services import authenticate_key

    require_redis()
    issued = create_api_key(users["user"], "fresh")

    def key_reads():
        with CaptureQueriesContext(connection) as queries:
            authenticate_key(issued.secret, client_ip="127.0.0.1")
        return [q["sql"] for q in queries if q["sql"].startswith("SELECT") and '"accounts_apikey"' in q["sql"]]

    assert len(key_reads()) == 1  # the first use reads the row, and caches it
    assert key_reads() == [] and key_reads() == []
    key = APIKey.objects.get(pk=issued.key.pk)
    key.name = "renamed"
    save_api_key(key)  # a change: the next use reads the row again, once
    assert len(key_reads()) == 1
    assert key_reads() == []


def test_replace_if_writes_only_over_the_value_it_was_given():
    from django.core.cache import cache

    from relay.redis_cache import replace_if

    require_redis()
    cache.set("swap-test", "forgotten:a", 30)
    assert not replace_if("swap-test", "forgotten:b", {"copy": 1}, 30)
    assert cache.get("swap-test") == "forgotten:a"
    assert replace_if("swap-test", "forgotten:a", {"copy": 1}, 30)
    assert cache.get("swap-test") == {"copy": 1}
    assert not replace_if("swap-test", "forgotten:a", {"copy": 2}, 30)  # once replaced, never again
    assert not replace_if("absent-key", None, {"copy": 3}, 30) and cache.get("absent-key") is None
