"""Who may call what: every URL pattern of the project, API and pages, against every role.

The table below is the access design in one place. ``test_every_url_pattern_is_in_the_matrix`` walks
Django's resolver, so a new endpoint fails the suite until someone decides (here) who may call it.

The rules (registry/selectors.py ``ROLE_GRANTS``, the access helpers of the API and the pages):

- a model's data needs a role on it: any role reads, publishers and owners push, approvers and owners
  sign off, owners manage; staff may do everything;
- a signed-in user with no role on an existing model gets 403 (the API and the pages say "you have no
  role"), whatever the action;
- the API answers an anonymous caller 401; a page redirects it to the login page;
- a few endpoints are public, each for a reason given in its row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from registry.auth import token_issue
from registry.models import Alias, Approval, ModelRole, ModelVersion, RegisteredModel, Role, Webhook
from tests import builders
from tests.conftest import Actor, push

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "outsider", "viewer", "publisher", "approver", "owner", "staff")
READ = frozenset({"viewer", "publisher", "approver", "owner", "staff"})
PUSH = frozenset({"publisher", "owner", "staff"})
APPROVE = frozenset({"approver", "owner", "staff"})
MANAGE = frozenset({"owner", "staff"})
SIGNED_IN = frozenset(ROLES) - {"anonymous"}
EVERYONE = frozenset(ROLES)

V = "/api/v1/models/fraud/versions/1"
UPLOAD = "00000000-0000-4000-8000-000000000000"  # no such direct upload


@dataclass(frozen=True)
class Rule:
    method: str
    path: str
    allowed: frozenset[str]
    body: object = None  # JSON for the API, form data for the pages; "PUSH" / "TRAFFIC" build a file
    # What a signed-in role outside ``allowed`` gets (403 unless the design says otherwise).
    denied: int = 403
    # What an anonymous caller gets when it is not allowed: 401 (API), or a redirect to this login page.
    anonymous: int | str = 401
    # An extra check after a denied call: that nothing was done.
    nothing_done: Callable[[dict], None] | None = field(default=None, compare=False)

    @property
    def page(self) -> bool:
        return not self.path.startswith(("/api/", "/slack/"))


def page(method: str, path: str, allowed: frozenset[str], body: object = None, **kw) -> Rule:
    kw.setdefault("anonymous", "/login/?next=")
    return Rule(method, path, allowed, body, **kw)


def _no_web_decision(ctx: dict) -> None:
    assert not Approval.objects.filter(channel=Approval.Channel.WEB).exists()


MATRIX: dict[str, list[Rule]] = {
    # --- public, each for a reason -----------------------------------------------------------------
    # The OpenAPI schema and its docs page describe the API, not its data (drf-spectacular serves
    # them with AllowAny): CI tools and the schemathesis test read them without a token.
    "api:schema": [Rule("get", "/api/v1/schema/", EVERYONE)],
    "api:docs": [Rule("get", "/api/v1/docs/", EVERYONE)],
    # Probes: load balancers and orchestrators call them without credentials.
    "healthz": [Rule("get", "/healthz", EVERYONE)],
    "readyz": [Rule("get", "/readyz", EVERYONE)],
    # Prometheus scrapes without credentials; it exposes counts per status, no names.
    "metrics": [Rule("get", "/metrics", EVERYONE)],
    # The login page must be reachable signed out; logging out is a POST anyone may make.
    "login": [Rule("get", "/login/", EVERYONE)],
    "logout": [Rule("post", "/logout/", EVERYONE)],
    # Slack calls it without a session or token: the request signature is the credential, so an
    # unsigned request is refused with 401 whoever sends it (tests/lifecycle/test_approval.py signs).
    "slack-interactions": [Rule("post", "/slack/interactions/", frozenset(), denied=401)],
    # The top bar's badge: signed out it answers an empty fragment rather than a login redirect that
    # htmx would swap into the bar (registry/ui/views.py inbox_count).
    "ui:inbox-count": [Rule("get", "/inbox/count/", EVERYONE)],
    # --- the Django admin: staff only (its own check; every admin:* pattern goes through it) ---------
    "admin:index": [
        page("get", "/admin/", frozenset({"staff"}), denied=302, anonymous="/admin/login/?next=")
    ],
    # --- API: any signed-in user (the answers are filtered to the models the user can see) -----------
    "api:model-list": [
        Rule("get", "/api/v1/models/", SIGNED_IN),
        Rule("post", "/api/v1/models/", SIGNED_IN, "NEW_MODEL"),
    ],
    "api:versions": [Rule("get", "/api/v1/versions/", SIGNED_IN)],
    "api:retirement-candidates": [Rule("get", "/api/v1/retirement/candidates/", SIGNED_IN)],
    # Datasets belong to no model: any signed-in user reads and registers them.
    "api:dataset-list": [
        Rule("get", "/api/v1/datasets/", SIGNED_IN),
        Rule("post", "/api/v1/datasets/", SIGNED_IN, "DATASET"),
    ],
    "api:dataset-detail": [Rule("get", "/api/v1/datasets/holdout/1/", SIGNED_IN)],
    # --- API: a model's data ------------------------------------------------------------------------
    "api:model-detail": [
        Rule("get", "/api/v1/models/fraud/", READ),
        Rule("patch", "/api/v1/models/fraud/", MANAGE, {"description": "changed"}),
    ],
    "api:model-policy": [
        Rule("get", "/api/v1/models/fraud/policy/", READ),
        Rule("put", "/api/v1/models/fraud/policy/", MANAGE, {"gates": [{"kind": "loads"}]}),
    ],
    "api:model-roles": [
        Rule("post", "/api/v1/models/fraud/roles/", MANAGE, {"username": "victor", "role": "viewer"})
    ],
    "api:alias-list": [Rule("get", "/api/v1/models/fraud/aliases/", READ)],
    "api:alias-detail": [
        Rule("put", "/api/v1/models/fraud/aliases/staging/", MANAGE, {"version": 1}),
        Rule("delete", "/api/v1/models/fraud/aliases/canary/", MANAGE),
    ],
    "api:model-history": [Rule("get", "/api/v1/models/fraud/history/", READ)],
    "api:version-list": [
        Rule("get", "/api/v1/models/fraud/versions/", READ),
        Rule("post", "/api/v1/models/fraud/versions/", PUSH, "PUSH"),
    ],
    # Direct uploads to S3: pushing by another road. On this filesystem store a start is a 409 and an
    # unknown upload a 404 for those allowed; the role is checked before either.
    "api:direct-upload-list": [
        Rule(
            "post",
            "/api/v1/models/fraud/uploads/",
            PUSH,
            {"filename": "m.onnx", "size": 10, "sha256": "a" * 64},
        )
    ],
    "api:direct-upload-detail": [Rule("delete", f"/api/v1/models/fraud/uploads/{UPLOAD}/", PUSH)],
    "api:direct-upload-complete": [
        Rule(
            "post",
            f"/api/v1/models/fraud/uploads/{UPLOAD}/complete/",
            PUSH,
            {"parts": [{"part_number": 1, "etag": "x"}]},
        )
    ],
    "api:version-detail": [Rule("get", f"{V}/", READ)],
    "api:version-artifact": [Rule("get", f"{V}/artifact/", READ)],
    "api:version-lineage": [Rule("get", f"{V}/lineage/", READ)],
    "api:version-report": [Rule("get", f"{V}/report/", READ)],
    "api:version-events": [Rule("get", f"{V}/events/", READ)],
    "api:version-exports": [Rule("get", f"{V}/exports/", READ)],
    "api:export-artifact": [Rule("get", f"{V}/exports/onnx/artifact/", READ)],
    "api:version-revalidate": [Rule("post", f"{V}/revalidate/", PUSH)],
    "api:version-approve": [Rule("post", f"{V}/approve/", APPROVE, {"comment": "ok"})],
    "api:version-reject": [Rule("post", f"{V}/reject/", APPROVE, {"comment": "no"})],
    "api:model-rollback": [Rule("post", "/api/v1/models/fraud/rollback/", APPROVE, {"comment": "back"})],
    "api:version-retire": [Rule("post", f"{V}/retire/", MANAGE, {"comment": "old"})],
    "api:version-restore": [Rule("post", f"{V}/restore/", MANAGE, {})],
    "api:webhook-list": [
        Rule("get", "/api/v1/models/fraud/webhooks/", MANAGE),
        Rule("post", "/api/v1/models/fraud/webhooks/", MANAGE, {"url": "https://example.com/h"}),
    ],
    "api:webhook-detail": [Rule("delete", "/api/v1/models/fraud/webhooks/{hook}/", MANAGE)],
    "api:webhook-ping": [Rule("post", "/api/v1/models/fraud/webhooks/{hook}/ping/", MANAGE)],
    "serving:model-predict": [
        Rule("post", "/api/v1/models/fraud/predict/", READ, {"inputs": [[0.1, 0.2, 0.3, 0.4]]})
    ],
    "serving:model-traffic": [Rule("post", "/api/v1/models/fraud/traffic/", PUSH, "TRAFFIC")],
    "serving:model-traffic-labels": [Rule("post", "/api/v1/models/fraud/traffic/labels/", PUSH, {})],
    # --- pages: any signed-in user (lists filtered to the models the user can see) -------------------
    "ui:model-list": [page("get", "/", SIGNED_IN)],
    "ui:inbox": [page("get", "/inbox/", SIGNED_IN)],
    "ui:version-search": [page("get", "/search/", SIGNED_IN)],
    "ui:retirement": [page("get", "/retirement/", SIGNED_IN)],
    "ui:dataset-detail": [page("get", "/datasets/holdout/1/", SIGNED_IN)],
    "ui:tokens": [page("get", "/tokens/", SIGNED_IN)],
    "ui:slack-identity": [page("post", "/tokens/slack/", SIGNED_IN, {"slack_user_id": ""})],
    # A user's own tokens only: another user's token is "not found", never "forbidden".
    "ui:token-revoke": [page("post", "/tokens/{token_key}/revoke/", frozenset({"owner"}), denied=404)],
    # --- pages: a model's data ----------------------------------------------------------------------
    "ui:model-detail": [page("get", "/models/fraud/", READ)],
    "ui:version-detail": [page("get", "/models/fraud/versions/1/", READ)],
    "ui:version-report": [page("get", "/models/fraud/versions/1/report/", READ)],
    "ui:version-status": [page("get", "/models/fraud/versions/1/status/", READ)],
    "ui:version-keep": [page("post", "/models/fraud/versions/1/keep/", MANAGE)],
    "ui:model-rollback": [page("post", "/models/fraud/rollback/", APPROVE, {"comment": "back"})],
    # Sign-off goes through approval_record, which refuses a reader without the approver role: the
    # page then redirects back with the refusal as a message, and nothing is recorded.
    "ui:version-approve": [
        page(
            "post",
            "/models/fraud/versions/1/approve/",
            APPROVE,
            {"comment": "ok"},
            nothing_done=_no_web_decision,
        )
    ],
    "ui:version-reject": [
        page(
            "post",
            "/models/fraud/versions/1/reject/",
            APPROVE,
            {"comment": "no"},
            nothing_done=_no_web_decision,
        )
    ],
    "ui:webhook-create": [page("post", "/models/fraud/webhooks/", MANAGE, {"url": "https://example.com/h"})],
    "ui:webhook-delete": [page("post", "/models/fraud/webhooks/{hook}/delete/", MANAGE)],
    "ui:webhook-ping": [page("post", "/models/fraud/webhooks/{hook}/ping/", MANAGE)],
}
# Signed-in readers without the approver role reach the sign-off views, which refuse them through the
# service (above): a redirect for readers, 403 for a user with no role at all.
UI_SIGNOFF_READERS = {"ui:version-approve": READ, "ui:version-reject": READ}


def _walk(patterns: list, namespace: str = "") -> list[str]:
    names = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names += _walk(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern):
            names.append(f"{namespace}{pattern.name}")
    return names


def test_every_url_pattern_is_in_the_matrix() -> None:
    names = _walk(get_resolver().url_patterns)
    # The Django admin's own patterns all sit behind its staff check, shown by admin:index.
    ours = {name for name in names if not name.startswith("admin:")}
    assert all(name and not name.endswith("None") for name in ours), "every URL pattern needs a name"
    assert "admin:index" in names
    assert ours - set(MATRIX) == set(), "new URL patterns: decide who may call them in MATRIX"
    assert set(MATRIX) - ours - {"admin:index"} == set(), "MATRIX names URL patterns that no longer exist"


# --- the calls ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(owner, publisher, approver, viewer, outsider, make_actor, fraud_model, tmp_path) -> dict:
    """The fraud model with one version awaiting approval (pushed by the publisher), an alias, a
    webhook and a dataset; one actor per role."""
    from tests.factories import DatasetFactory

    staff = make_actor("stella", staff=True)
    assert push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path)).status_code == 201
    ModelVersion.objects.filter(model=fraud_model, version=1).update(status="awaiting_approval")
    version = ModelVersion.objects.get(model=fraud_model, version=1)
    Alias.objects.create(model=fraud_model, name="canary", version=version)
    hook = Webhook.objects.create(model=fraud_model, url="https://example.com/hook", secret="s3cr3t")
    DatasetFactory(name="holdout", version=1)
    actors = {
        "owner": owner,
        "publisher": publisher,
        "approver": approver,
        "viewer": viewer,
        "outsider": outsider,
        "staff": staff,
    }
    return {"actors": actors, "hook": hook.pk, "token_key": owner_token_key(owner), "tmp": tmp_path}


def owner_token_key(owner: Actor) -> str:
    token, _ = token_issue(user=owner.user, name="matrix")
    return token.token_key


def _client(world: dict, role: str, rule: Rule):
    if role == "anonymous":
        return Client() if rule.page else APIClient()
    actor = world["actors"][role]
    if rule.page:
        client = Client()
        client.force_login(actor.user)
        return client
    return actor.client


def _call(world: dict, role: str, rule: Rule, index: int):
    client = _client(world, role, rule)
    path = rule.path.format(hook=world["hook"], token_key=world["token_key"])
    body = rule.body
    if body == "PUSH":
        artifact = builders.tiny_onnx_model(world["tmp"] / role, seed=index + 10)
        with artifact.open("rb") as fh:
            return client.post(path, {"artifact": fh, "metadata": "{}"}, format="multipart")
    if body == "TRAFFIC":
        (world["tmp"] / "traffic.jsonl").write_text('{"inputs": [0.1, 0.2, 0.3, 0.4]}\n')
        with (world["tmp"] / "traffic.jsonl").open("rb") as fh:
            return client.post(path, {"file": fh}, format="multipart")
    if body == "DATASET":
        csv = world["tmp"] / f"{role}.csv"
        csv.write_text("x,y\n1,0\n2,1\n")
        with csv.open("rb") as fh:
            return client.post(path, {"file": fh, "name": f"set-{index}"}, format="multipart")
    if body == "NEW_MODEL":
        body = {"name": f"model-{index}"}
    if rule.page:
        return getattr(client, rule.method)(path, body or {})
    if body is None:
        return getattr(client, rule.method)(path)
    return getattr(client, rule.method)(path, body, format="json")


CASES = [(name, i) for name, rules in MATRIX.items() for i in range(len(rules))]


@pytest.mark.parametrize(
    ("name", "index"), CASES, ids=[f"{n} {MATRIX[n][i].method.upper()}" for n, i in CASES]
)
def test_each_role_gets_the_answer_the_matrix_gives(world: dict, name: str, index: int) -> None:
    rule = MATRIX[name][index]
    # The refused roles first, so that an allowed call (a delete, a sign-off) cannot change their answer.
    order = sorted(ROLES, key=lambda role: role in rule.allowed)
    for n, role in enumerate(order):
        response = _call(world, role, rule, n)
        status = response.status_code
        content = b"(streamed)" if response.streaming else response.content[:300]
        where = f"{name} {rule.method.upper()} as {role}: {status} {content!r}"
        assert status < 500, where
        if role in rule.allowed:
            assert status not in {401, 403}, where
            if rule.page and name != "logout":  # logging out does end on the login page
                assert "/login/" not in response.get("Location", ""), where
        elif role == "anonymous":
            if isinstance(rule.anonymous, str):
                assert status == 302 and response["Location"].startswith(rule.anonymous), where
            else:
                assert status == rule.anonymous, where
        elif name in UI_SIGNOFF_READERS and role in UI_SIGNOFF_READERS[name]:
            assert status == 302, where
            rule.nothing_done(world)
        else:
            assert status == rule.denied, where
            if rule.denied == 403 and not rule.page:
                assert response.json()["error"]["code"] in {"permission_denied", "approval_refused"}, where


def test_lists_show_an_outsider_nothing_of_a_model_it_has_no_role_on(world: dict) -> None:
    outsider = world["actors"]["outsider"]
    assert outsider.client.get("/api/v1/models/").json()["results"] == []
    assert outsider.client.get("/api/v1/versions/").json()["results"] == []
    assert outsider.client.get("/api/v1/retirement/candidates/").json()["results"] == []
    page = Client()
    page.force_login(outsider.user)
    for path in ("/", "/inbox/", "/search/", "/retirement/", "/datasets/holdout/1/"):
        response = page.get(path)
        assert response.status_code == 200, path
        assert b"/models/fraud/" not in response.content, path


def test_a_role_on_one_model_gives_nothing_on_another(world: dict) -> None:
    other = RegisteredModel.objects.create(name="churn")
    viewer = world["actors"]["viewer"]
    assert not ModelRole.objects.filter(model=other, user=viewer.user).exists()
    assert viewer.client.get("/api/v1/models/churn/").status_code == 403
    assert viewer.client.get("/api/v1/models/nothing/").status_code == 404
    ModelRole.objects.create(model=other, user=viewer.user, role=Role.VIEWER)
    assert viewer.client.get("/api/v1/models/churn/").status_code == 200
