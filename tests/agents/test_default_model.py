"""The default model can always be billed: an enabled endpoint without a price never becomes it.

A request without `model` runs on the first *priced* model; an enabled endpoint nobody priced is
a system-check warning (agents.W001) and is flagged in the admin.
"""

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from agents.actions.endpoints import create_endpoint
from billing.models import ModelPrice
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db


def served(name: str, upstream_model: str = "", **fields):
    return create_endpoint(name, deployments=[{"name": "primary", "base_url": "http://127.0.0.1:9/v1",
                                               "upstream_model": upstream_model}], **fields)


@pytest.fixture
def unpriced_first():
    """An enabled upstream endpoint nobody priced, listed before every other model (names sort first)."""
    return served("aaa-unpriced", upstream_model="x")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (0, 128, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def test_queries_without_a_model_run_on_the_first_priced_model(users, client_for, unpriced_first):
    client = client_for(users["user"])
    answer = client.post(reverse("query"), {"query": "integrate x^2", "agent_type": "math"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["model"] != "aaa-unpriced" and answer.json()["status"] == "complete"
    assert ModelPrice.objects.filter(model=answer.json()["model"]).exists()

    # Naming the unpriced model still says clearly why it cannot run.
    named = client.post(reverse("query"), {"query": "hi", "agent_type": "math", "model": "aaa-unpriced"},
                        format="json")
    assert "No price is configured" in str(assert_envelope(named, 400)["fields"]["model"])


def test_image_analysis_without_a_model_runs_on_the_first_priced_model(users, client_for, unpriced_first):
    client = client_for(users["user"])
    image = SimpleUploadedFile("blue.png", png(), "image/png")
    seen = client.post(reverse("vision-analyze"), {"image": image, "question": "Which colour?"}, format="multipart")
    assert seen.status_code == 200, seen.content
    assert seen.json()["model"] != "aaa-unpriced" and "PNG" in seen.json()["answer"]


def test_a_priced_endpoint_stays_the_default(users, client_for):
    from agents.providers.catalog import resolve

    served("aaa-priced")
    ModelPrice.objects.create(model="aaa-priced", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    assert resolve(None).name == "aaa-priced"
    # A price that only takes effect tomorrow does not make a model billable today.
    served("aa-tomorrow")
    ModelPrice.objects.create(model="aa-tomorrow", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"),
                              effective_from=timezone.now() + timedelta(days=1))
    assert resolve(None).name == "aaa-priced"


def test_manage_check_warns_about_an_enabled_endpoint_without_a_price(unpriced_first):
    served("off-unpriced", enabled=False)
    out, err = io.StringIO(), io.StringIO()
    call_command("check", stdout=out, stderr=err)
    warnings = out.getvalue() + err.getvalue()
    assert "agents.W001" in warnings and "aaa-unpriced" in warnings
    assert "off-unpriced" not in warnings  # disabled endpoints serve nobody

    ModelPrice.objects.create(model="aaa-unpriced", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    out, err = io.StringIO(), io.StringIO()
    call_command("check", stdout=out, stderr=err)
    assert "agents.W001" not in out.getvalue() + err.getvalue()


@pytest.fixture
def superuser(org):
    from accounts.actions.users import create_user

    user = create_user("root", organization=org, role="admin", password="correct horse battery staple")
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    return user


def test_admin_flags_an_enabled_endpoint_without_a_price(client, superuser, unpriced_first):
    priced = served("bbb-priced")
    ModelPrice.objects.create(model="bbb-priced", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    client.force_login(superuser)

    listing = client.get(reverse("admin:agents_modelendpoint_changelist"))
    assert listing.status_code == 200
    rows = {row.obj.name: row for row in _result_rows(listing)}
    assert rows["aaa-unpriced"].priced is False and rows["bbb-priced"].priced is True
    text = listing.content.decode()
    assert "aaa-unpriced" in _warnings(listing) and "bbb-priced" not in _warnings(listing)
    assert "priced" in text.lower()

    change = client.get(reverse("admin:agents_modelendpoint_change", args=[unpriced_first.pk]))
    assert change.status_code == 200 and "no price" in _warnings(change).lower()
    assert "no price" not in _warnings(client.get(reverse("admin:agents_modelendpoint_change",
                                                          args=[priced.pk]))).lower()


class _Row:
    def __init__(self, obj, priced):
        self.obj, self.priced = obj, priced


def _result_rows(response):
    """The changelist's objects with the value its `priced` column shows."""
    changelist = response.context["cl"]
    column = changelist.model_admin.priced
    return [_Row(obj, column(obj)) for obj in changelist.result_list]


def _warnings(response) -> str:
    return " ".join(str(m) for m in response.context["messages"] if m.level_tag == "warning")
