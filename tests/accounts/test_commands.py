from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import APIKey, Organization, User
from accounts.services import authenticate_key

pytestmark = pytest.mark.django_db


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_organization_user_and_key_from_the_command_line():
    run("create_organization", "Initech", "--time-zone", "Europe/Berlin")
    assert Organization.objects.get(name="Initech").time_zone == "Europe/Berlin"
    run("create_user", "peter", "--org", "Initech", "--role", "user", "--email", "p@initech.example",
        "--password", "a long enough passphrase", "--team", "TPS")
    peter = User.objects.get(username="peter")
    assert peter.role == "user" and peter.team.name == "TPS" and peter.check_password("a long enough passphrase")
    out, _ = run("create_api_key", "--user", "peter", "--name", "cli", "--scopes", "use_math_agent",
                 "--expires-days", "30")
    secret = out.strip()
    assert authenticate_key(secret).owner == peter
    assert APIKey.objects.get(name="cli").scopes == ["use_math_agent"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("create_organization", ""), "name"),
        (("create_organization", "X", "--time-zone", "Mars/Olympus"), "time zone"),
        (("create_user", "u", "--org", "Nope", "--role", "user", "--email", "u@x.example"), "No organization"),
        (("create_user", "u", "--org", "Demo", "--role", "wizard", "--email", "u@x.example"), "Unknown role"),
        (("create_user", "u", "--org", "Demo", "--role", "user", "--email", "not-an-email"), "email"),
        (("create_api_key", "--user", "ghost", "--name", "k"), "No user"),
        (("create_api_key", "--user", "demo-viewer", "--name", "k", "--scopes", "manage_users"), "does not hold"),
        (("create_api_key", "--user", "demo-viewer", "--name", "k", "--expires-days", "0"), "at least 1"),
    ],
)
def test_commands_refuse_bad_input_with_a_clear_message(args, message):
    run("seed_demo")
    users_before = User.objects.count()
    with pytest.raises(CommandError, match=f"(?i){message}"):
        run(*args)
    assert User.objects.count() == users_before


def test_seed_demo_is_idempotent_and_prints_working_keys():
    out, _ = run("seed_demo")
    keys = [line.split("key: ")[1] for line in out.splitlines() if "key: rk_" in line]
    assert len(keys) == 4
    assert {authenticate_key(k).owner.role for k in keys} == {"admin", "user", "viewer", "api_user"}
    counts = (Organization.objects.count(), User.objects.count(), APIKey.objects.count())
    again, _ = run("seed_demo")
    assert "already issued" in again
    assert (Organization.objects.count(), User.objects.count(), APIKey.objects.count()) == counts
