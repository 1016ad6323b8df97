"""The production profile passes Django's deployment checks, and every form that posts carries a CSRF
token (the UI's session-authenticated forms; the API uses bearer tokens)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

from tests.conftest import ROOT


def test_check_deploy_is_clean_with_the_production_profile():
    env = {
        **os.environ,
        "MODELGATE_PROFILE": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "modelgate.example.com",
        "DEBUG": "false",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_every_post_form_in_the_templates_carries_a_csrf_token():
    forms = 0
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        for match in re.finditer(r"<form\b[^>]*>(.*?)</form>", text, flags=re.S | re.I):
            if re.search(r'method="post"', match.group(0)[:300], flags=re.I):
                forms += 1
                assert "{% csrf_token %}" in match.group(1), f"{path.name}: a POST form without csrf_token"
    assert forms >= 8
