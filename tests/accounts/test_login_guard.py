"""Password guessing meets the same limit on the console's sign-in and the admin's
(accounts.login_guard): per address, per username, counted before the password is checked."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import Client

from accounts import login_guard

PASSWORD = "correct horse battery staple"
pytestmark = pytest.mark.django_db


def attempt(path: str, username: str, password: str, address: str = "203.0.113.7", client: Client | None = None):
    return (client or Client(REMOTE_ADDR=address)).post(path, {"username": username, "password": password},
                                                        REMOTE_ADDR=address)


def test_the_admin_sign_in_refuses_an_address_after_ten_wrong_passwords(users):
    statuses = [attempt("/admin/login/", "admin", f"guess-{i}").status_code for i in range(10)]
    assert statuses == [200] * 10
    client = Client()
    refused = attempt("/admin/login/", "admin", PASSWORD, client=client)  # even the right password, now
    assert refused.status_code == 429 and refused["Retry-After"] == str(login_guard.WINDOW_SECONDS)
    assert "Too many failed sign-ins" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    other_address = attempt("/admin/login/", "viewer", "guess", address="198.51.100.20")
    assert other_address.status_code == 200  # another address and another name still get their tries


def test_the_console_and_the_admin_count_as_one_door(users):
    for i in range(5):
        assert attempt("/login/", "user", f"guess-{i}").status_code == 200
        assert attempt("/admin/login/", "user", f"guess-{i}").status_code == 200
    assert attempt("/login/", "user", PASSWORD).status_code == 429
    assert attempt("/admin/login/", "user", PASSWORD).status_code == 429


def test_guesses_at_one_name_spread_over_many_addresses_are_refused(users):
    for i in range(login_guard.PER_USERNAME):
        assert attempt("/admin/login/", " ADMIN ", f"guess-{i}", address=f"198.51.100.{i + 1}").status_code == 200
    assert attempt("/admin/login/", "admin", PASSWORD, address="192.0.2.99").status_code == 429
    assert attempt("/login/", "Admin", PASSWORD, address="192.0.2.98").status_code == 429
    assert attempt("/login/", "viewer", PASSWORD, address="192.0.2.97").status_code == 302  # the name's own limit


def test_successful_sign_ins_do_not_use_up_the_window(users):
    for _ in range(login_guard.PER_ADDRESS + 5):
        client = Client()
        assert attempt("/login/", "user", PASSWORD, client=client).status_code == 302
        assert attempt("/admin/login/", "admin", PASSWORD, client=Client()).status_code == 302
    assert attempt("/login/", "user", "wrong").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_parallel_guesses_cannot_all_pass_before_the_first_fails(users):
    # Counted before the password is checked: however the guesses interleave, exactly the
    # allowed number reach the password check.
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda i: attempt("/admin/login/", "admin", f"guess-{i}").status_code, range(24)))
    assert sorted(statuses) == [200] * login_guard.PER_ADDRESS + [429] * (24 - login_guard.PER_ADDRESS)
