"""The Training page (templates/console/training.html, static/js/training*.js) and the chat's
exclude-from-training control (static/js/chat_training.js) in Chromium, against a live Relay."""

import json
import re
import threading
from decimal import Decimal

import pytest

from tests.browser.conftest import screenshot
from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig
from tests.training.conftest import conversation, turn

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
HEX64 = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(autouse=True)
def training_dir(settings, tmp_path):
    settings.RELAY_TRAINING_DIR = tmp_path / "training"
    settings.CELERY_TASK_ALWAYS_EAGER = True  # builds and evaluations run once the request commits, as in `make run`


def in_thread(function, *args):
    """function(*args) in a thread of its own, with its own database connection, closed after."""
    from django.db import connection

    result = {}

    def work():
        try:
            result["value"] = function(*args)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(60)
    return result["value"]


def seed(user, count=3):
    """count conversations of user, each one question with an e-mail address in it and one answer."""
    chats = []
    for n in range(count):
        chat = conversation(user)
        chat.title = f"Question {n}"
        chat.save(update_fields=["title"])
        turn(chat, f"Write to person{n}@example.com about order {n}: what is {n} + {n}?",
             f"Order {n} is fine: {n} + {n} = {2 * n}, and the reply goes to a distinct mailbox number {n}.")
        chats.append(chat)
    return chats


def test_an_admin_turns_consent_on_builds_a_dataset_and_downloads_it(new_page, users):
    from training.models import DatasetVersion

    seed(users["user"])
    page = new_page(users["admin"])
    page.goto("/training/")
    assert page.locator("#consent-state").inner_text() == "Off"
    page.get_by_role("button", name="Turn training on").click()
    page.wait_for_selector("#consent-state.pill-on:has-text('On')")
    assert "may be used to build training datasets" in page.locator("#consent-text").inner_text()

    form = page.locator("#dataset-form")
    form.get_by_label("Name").fill("Support answers")
    form.get_by_label("Minimum quality score (0 to 1)").fill("0.5")
    form.get_by_role("button", name="Create dataset").click()
    page.wait_for_selector("#dataset-form-ok:has-text('Created')")
    row = page.locator("#dataset-body tr", has_text="Support answers")
    assert "quality ≥ 0.5" in row.inner_text()
    row.get_by_role("button", name="Build Support answers").click()

    version = page.locator("#version-list .version").first
    version.locator("[data-fact='Rows']").wait_for()
    assert version.get_attribute("data-state") == "done"
    built = DatasetVersion.objects.get()
    assert version.locator("[data-fact='Content SHA-256']").inner_text() == built.content_sha256
    assert HEX64.fullmatch(built.content_sha256)
    assert version.locator("[data-fact='Rows']").inner_text().startswith("3 (")
    assert "email 3" in version.locator("[data-fact='Redactions']").inner_text()

    with page.expect_download() as started:
        version.get_by_role("link", name="Download chat JSONL").click()
    lines = open(started.value.path(), encoding="utf-8").read().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 3 and all(row["messages"][0]["role"] for row in rows)
    assert "@example.com" not in "\n".join(lines)  # redacted before anything was written

    # Consent off closes the version's downloads (409 from the API): the page offers none, says why.
    page.get_by_role("button", name="Turn training off").click()
    version.locator("[data-closed='consent']").wait_for()
    assert version.get_by_role("link").count() == 0 and "consent is off" in version.inner_text()


def test_build_progress_is_shown_until_the_version_is_done(new_page, users, monkeypatch):
    from django.db import connection

    from tests.training.conftest import dataset
    from training.actions import builds
    from training.actions.consent import set_consent

    seed(users["user"])
    admin = users["admin"]
    set_consent(admin.organization, enabled=True, actor=admin)
    version = builds.request_build(dataset(admin.organization, name="Everything"), actor=admin, enqueue=False)
    page = new_page(admin)
    page.goto("/training/")
    page.get_by_role("button", name="Versions of Everything").click()
    item = page.locator(f"#version-{version.pk}")
    item.locator("progress").wait_for()
    assert item.locator("progress").is_visible() and "waiting to start" in item.inner_text()

    monkeypatch.setattr(builds, "PROGRESS_SECONDS", 0)  # report after every conversation
    seen_one, go_on = threading.Event(), threading.Event()

    def hold(_):
        seen_one.set()
        go_on.wait(30)

    def work():
        try:
            builds.run_build(version.pk, on_progress=hold)
        finally:
            go_on.set()
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert seen_one.wait(30)
        page.wait_for_selector(f"#version-{version.pk}:has-text('1 / 3')")
        assert item.locator("progress").get_attribute("value") == "33"
    finally:
        go_on.set()
        worker.join(30)
    page.locator(f"#version-{version.pk}[data-state='done']").wait_for()
    assert "3 (" in item.locator("[data-fact='Rows']").inner_text()


def test_an_empty_build_says_so_and_offers_no_download(new_page, users):
    from tests.training.conftest import dataset
    from training.actions.consent import set_consent
    from training.services import EMPTY_MESSAGE

    admin = users["admin"]
    set_consent(admin.organization, enabled=True, actor=admin)
    dataset(admin.organization, name="Nothing yet")
    page = new_page(admin)
    page.goto("/training/")
    page.get_by_role("button", name="Build Nothing yet").click()
    version = page.locator("#version-list .version[data-state='done']")
    version.wait_for()
    assert EMPTY_MESSAGE in version.inner_text()
    assert version.get_by_role("link").count() == 0


def test_an_excluded_conversation_stays_out_of_the_next_build(new_page, users):
    from tests.training.conftest import build, dataset
    from training.actions.consent import set_consent
    from training.models import ConversationExclusion, VersionConversation

    kept, left_out = seed(users["user"], count=2)
    page = new_page(users["user"])
    page.goto("/chat/")
    page.locator("#conversation-list .conversation", has_text="Question 1").click()
    button = page.get_by_role("button", name="Exclude from training")
    button.click()
    page.get_by_role("button", name="Include in training").wait_for()
    assert page.locator("#training-state").inner_text() == "Excluded from training"
    assert ConversationExclusion.objects.filter(conversation=left_out, reason="user").exists()
    page.locator("#conversation-list .conversation", has_text="Question 0").click()
    page.get_by_role("button", name="Exclude from training").wait_for()  # each conversation its own state

    admin = users["admin"]
    set_consent(admin.organization, enabled=True, actor=admin)
    version = build(dataset(admin.organization))
    assert set(VersionConversation.objects.filter(version=version).values_list("conversation_id", flat=True)) == {
        kept.pk}


@pytest.fixture
def two_models(transactional_db):
    """fake-a answers "42", fake-b "Paris" at ten times the price (as in tests/training/test_evaluations.py)."""
    from agents.actions.endpoints import create_endpoint
    from billing.models import ModelPrice

    servers = {}
    with FakeUpstream(FakeUpstreamConfig(reply="42", tokens=1, prompt_tokens=10)) as a, \
            FakeUpstream(FakeUpstreamConfig(reply="Paris", tokens=1, prompt_tokens=10)) as b:
        for name, server, price in (("fake-a", a, "0.001"), ("fake-b", b, "0.01")):
            create_endpoint(name, deployments=[{"name": "primary", "base_url": server.base_url,
                                                "upstream_model": name}])
            ModelPrice.objects.create(model=name, input_per_1k=Decimal(price), output_per_1k=2 * Decimal(price))
            servers[name] = server
        yield servers


def test_an_evaluation_of_two_models_shows_the_comparison_and_charts(new_page, users, two_models):
    page = new_page(users["admin"])
    page.goto("/training/")
    form = page.locator("#set-form")
    form.get_by_label("Name").fill("Capitals and sums")
    form.get_by_label("Upload a JSONL file").check()
    bad = b'{"prompt": "What is 6 times 7?", "reference": "42"}\n{"reference": "Paris"}\n'
    form.locator("#set-file").set_input_files({"name": "set.jsonl", "mimeType": "application/jsonl", "buffer": bad})
    form.get_by_role("button", name="Create evaluation set").click()
    error = form.locator('[data-field="file"]')
    page.wait_for_selector("#set-form [data-field=file]:has-text('2')")
    assert "line 2" in error.inner_text().lower()

    good = (b'{"prompt": "What is 6 times 7?", "reference": "42.0"}\n'
            b'{"prompt": "What is the capital of France?", "reference": "Paris"}\n')
    form.locator("#set-file").set_input_files({"name": "set.jsonl", "mimeType": "application/jsonl", "buffer": good})
    form.get_by_role("button", name="Create evaluation set").click()
    page.wait_for_selector("#set-form-ok:has-text('2 items')")

    run = page.locator("#run-form")
    run.get_by_label("fake-a", exact=True).check()
    run.get_by_label("fake-b", exact=True).check()
    run.get_by_role("button", name="Start evaluation").click()
    page.wait_for_selector("#comparison-body tr[data-target='fake-b']")
    page.wait_for_selector("#evaluation-progress[data-state='done']")
    cells = {target: page.locator(f"#comparison-body tr[data-target='{target}'] td").all_inner_texts()
             for target in ("fake-a", "fake-b")}
    # items, exact match, F1, quality mean, p50, latency p50, p95, cost, cost per item
    assert cells["fake-a"][0] == "2 / 2" and cells["fake-a"][1] == "100.0%" and cells["fake-a"][2] == "0.0%"
    assert cells["fake-b"][1] == "0.0%" and cells["fake-b"][2] == "100.0%"
    assert cells["fake-a"][7] == "$0.000024" and cells["fake-b"][8] == "$0.00012"
    page.wait_for_function(
        "() => [...document.querySelectorAll('#comparison-charts canvas')].every(c => Chart.getChart(c))")
    chart = page.evaluate("Chart.getChart(document.querySelector('canvas[data-chart=quality]')).data.labels")
    assert chart == ["fake-a", "fake-b"]
    assert page.locator("#evaluation-budget").is_hidden()
    page.locator("#comparison-card").scroll_into_view_if_needed()
    screenshot(page, "training-evaluation")


def test_an_evaluation_stopped_by_its_budget_says_what_it_finished(new_page, users, two_models):
    from billing.models import Budget
    from tests.billing.test_live_budgets import prompt_tokens
    from training import evaluations
    from training.actions.evaluations import create_set, run_evaluation, start_evaluation

    admin, query = users["admin"], "What is 6 times 7?"
    tokens_in = prompt_tokens(query)  # with the general agent's tools, which fake-a is sent
    two_models["fake-a"].configure(tokens=10, prompt_tokens=tokens_in)
    one_run = Decimal(tokens_in * 1000 + 10 * 2000) / 10**9  # fake-a's price per token, in dollars
    Budget.objects.create(organization=admin.organization, scope="user", user=admin, period="monthly",
                          limit_usd=one_run * Decimal("2.5"), hard=True)
    items = evaluations.parse_upload(b"".join(b'{"prompt": "What is 6 times 7?", "reference": "42"}\n' for _ in range(4)))
    evaluation_set = create_set(admin.organization, actor=admin, name="sums", items=items)
    started = start_evaluation(evaluation_set, actor=admin, targets=["fake-a"], max_tokens=10, enqueue=False)
    evaluation = in_thread(run_evaluation, started.pk)  # its runner calls async code; Playwright's loop is here
    assert evaluation.stopped_by_budget

    page = new_page(admin)
    page.goto("/training/")
    page.get_by_role("button", name=f"Show evaluation {evaluation.pk}").click()
    banner = page.locator("#evaluation-budget")
    banner.wait_for()
    assert banner.inner_text().startswith("Stopped by a budget after 2 of 4 runs")
    assert page.locator("#comparison-body tr[data-target='fake-a'] td").first.inner_text() == "2 / 4"


def test_without_manage_training_there_is_no_link_and_the_page_is_refused(new_page, users):
    page = new_page(users["user"])
    page.goto("/usage/")
    assert page.locator("[data-nav='training']").count() == 0
    response = page.goto("/training/")
    assert response.status == 403
    assert "can't open this page" in page.locator("main").inner_text()


def test_the_training_page_works_at_phone_width_in_the_dark(new_page, users):
    page = new_page(users["admin"], width=390, height=844)
    page.emulate_media(color_scheme="dark")
    page.goto("/training/")
    page.wait_for_selector("#dataset-body tr:has-text('No datasets yet.')")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    background = page.evaluate("getComputedStyle(document.querySelector('.card')).backgroundColor")
    assert background != "rgb(255, 255, 255)"
