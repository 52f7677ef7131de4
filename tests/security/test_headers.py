"""Security headers, cookies, CSRF, clickjacking and stored XSS, as a browser would meet them."""

import json
import re
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.actions.users import create_user
from agents.actions.documents import upload_document
from agents.models import Conversation
from tests.conftest import assert_envelope
from tests.test_permission_matrix import page_path
from tests.test_project import PRODUCTION_ENV, run_manage

XSS = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


class ScriptAudit(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, event-handler attributes, javascript: URLs."""

    def __init__(self):
        super().__init__()
        self.inline, self._in_inline = [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.inline.append(f"<{tag} {name}=javascript:...>")
        data_only = (attrs.get("type") or "").lower() in ("application/json", "application/ld+json")
        self._in_inline = tag == "script" and not attrs.get("src") and not data_only

    def handle_data(self, data):
        if self._in_inline and data.strip():
            self.inline.append(f"<script>{data.strip()[:80]}")

    def handle_endtag(self, tag):
        self._in_inline = False


def inline_code(html: str) -> list[str]:
    audit = ScriptAudit()
    audit.feed(html)
    return audit.inline


def csp_directives(response) -> dict:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


@pytest.fixture
def superuser(org):
    user = create_user("root", organization=org, role="admin", password="correct horse battery staple")
    user.is_staff = user.is_superuser = True
    user.save()
    return user


def pages_to_check():
    from tests.test_permission_matrix import PAGES

    return sorted(PAGES)


def test_every_response_carries_the_security_headers(db, client):
    # Controls: SecurityMiddleware (nosniff, Referrer-Policy), XFrameOptionsMiddleware, relay.security (CSP).
    for url in ("/login/", "/api/v1/me", "/healthz", "/api/docs/"):
        response = client.get(url)
        assert response["X-Content-Type-Options"] == "nosniff", url
        assert response["Referrer-Policy"] == "same-origin", url
        assert response["X-Frame-Options"] == "DENY", url
        directives = csp_directives(response)
        assert directives["script-src"] == ["'self'"], url
        assert directives["frame-ancestors"] == ["'none'"] and directives["object-src"] == ["'none'"], url
        assert "Strict-Transport-Security" not in response  # plain HTTP in tests: HSTS only behind TLS


@pytest.mark.parametrize("name", pages_to_check())
def test_console_pages_have_no_inline_script(name, users, client):
    # Control: the strict CSP is only livable if our pages need no inline script; this keeps it so.
    client.force_login(users["admin"])
    response = client.get(page_path(name))
    assert response.status_code == 200, (name, response.status_code)
    assert inline_code(response.content.decode()) == [], name


def test_admin_and_api_docs_have_no_inline_script(superuser, client):
    assert inline_code(client.get("/login/").content.decode()) == []
    client.force_login(superuser)
    for url in ("/admin/", "/admin/accounts/user/", "/admin/accounts/user/add/", "/api/docs/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert inline_code(response.content.decode()) == [], url
    # Swagger UI's start-up code is served as a script file, not inline (drf-spectacular split view).
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and "javascript" in script["Content-Type"]


def test_production_cookies_and_hsts_behind_tls():
    # Controls: relay/settings.py's RELAY_BEHIND_TLS block (secure cookies, HSTS, proxy SSL header).
    probe = (
        "from django.conf import settings as s; from django.test import Client; import json; "
        "r = Client().get('/healthz', HTTP_X_FORWARDED_PROTO='https', HTTP_HOST='relay.example.com'); "
        "print(json.dumps({'session_secure': s.SESSION_COOKIE_SECURE, 'session_httponly': s.SESSION_COOKIE_HTTPONLY, "
        "'csrf_secure': s.CSRF_COOKIE_SECURE, 'hsts_seconds': s.SECURE_HSTS_SECONDS, "
        "'hsts': r.headers.get('Strict-Transport-Security', ''), 'redirect': s.SECURE_SSL_REDIRECT}))"
    )
    result = run_manage("shell", "-c", probe, env_overrides={**PRODUCTION_ENV, "RELAY_BEHIND_TLS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["session_secure"] and seen["session_httponly"] and seen["csrf_secure"] and seen["redirect"]
    assert seen["hsts_seconds"] >= 31536000 and "max-age=31536000" in seen["hsts"]


def test_the_session_cookie_is_httponly_and_samesite(users):
    client = Client()
    response = client.post("/login/", {"username": "user", "password": "correct horse battery staple"})
    assert response.status_code == 302
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] and cookie["samesite"].lower() in ("lax", "strict")


def test_session_authenticated_unsafe_api_calls_need_the_csrf_token(users):
    # Control: DRF SessionAuthentication.enforce_csrf (and CsrfViewMiddleware for forms).
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(users["admin"])
    for method, url, body in (("post", reverse("apikey-list"), {"name": "csrf"}),
                              ("post", reverse("conversation-list"), {"agent": "math"}),
                              ("post", reverse("query"), {"query": "1+1", "agent_type": "math"}),
                              ("delete", reverse("user-detail", args=[users["user"].pk]), None)):
        response = getattr(client, method)(url, body, format="json")
        error = assert_envelope(response, 403, "permission_denied")
        assert "CSRF" in error["message"], (url, error)
    users["user"].refresh_from_db()
    assert users["user"].is_active
    # With the token it works: the refusal above was the CSRF check, not something else.
    client.get("/keys/")
    token = client.cookies["csrftoken"].value
    assert client.post(reverse("apikey-list"), {"name": "csrf"}, format="json", HTTP_X_CSRFTOKEN=token).status_code == 201


def test_login_and_admin_forms_need_the_csrf_token(users, superuser):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/login/", {"username": "user", "password": "correct horse battery staple"}).status_code == 403
    client.force_login(superuser)
    assert client.post("/admin/accounts/organization/add/", {"name": "Evil", "slug": "evil"}).status_code == 403
    assert client.post("/logout/").status_code == 403


def test_every_console_form_carries_a_csrf_token(users, client):
    client.force_login(users["admin"])
    for name in pages_to_check() + ["login"]:
        if name == "login":
            client.logout()
        html = client.get(reverse("login") if name == "login" else page_path(name)).content.decode()
        for form in re.findall(r"<form\b.*?</form>", html, flags=re.S | re.I):
            if re.search(r'method=["\']?post', form, flags=re.I):
                assert "csrfmiddlewaretoken" in form, (name, form[:200])


def test_stored_xss_through_conversation_titles_and_document_names_is_escaped(users, superuser, client):
    # Control: Django template auto-escaping (and json_script for data handed to the console's JS).
    victim = users["user"]
    Conversation.objects.create(organization_id=victim.organization_id, user=victim, agent="math", title=XSS)
    upload_document(victim, name=f"{XSS}.txt", data=b"plain text", content_type="text/plain")
    client.force_login(victim)
    pages = ["/chat/", "/keys/", "/usage/", "/"]
    client.force_login(superuser)
    admin_pages = ["/admin/agents/conversation/", "/admin/agents/document/", "/admin/audit/auditevent/"]
    for who, urls in ((victim, pages), (superuser, admin_pages)):
        client.force_login(who)
        for url in urls:
            response = client.get(url)
            if response.status_code == 404 and url not in admin_pages:
                continue  # a console page not built yet
            assert response.status_code == 200, url
            html = response.content.decode()
            assert XSS not in html and "<img src=x" not in html, url
            assert not [c for c in inline_code(html) if "pwned" in c or "onerror" in c], url
    client.force_login(victim)
    assert "&lt;script&gt;alert(&quot;pwned&quot;)" in client.get("/chat/").content.decode()


def test_api_answers_are_json_and_not_cached(users, client_for):
    # JSON with nosniff cannot be run as a script; no-store keeps credentialed data out of shared caches.
    response = client_for(users["user"]).get(reverse("me"))
    assert response["Content-Type"].startswith("application/json")
    assert response["Cache-Control"] == "no-store"
