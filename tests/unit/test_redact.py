"""Secrets stay out of log text and out of settings' repr.

``redact`` masks the secret shapes seen in practice (OAuth tokens in query strings, JSON
passwords, webhook tokens in URL paths); the settings models of the database and Service Bus
never show a password, a connection string or a webhook URL in ``repr``/``str``, and a malformed
``ORCH_API_API_KEYS`` is refused without printing the keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from listeners.settings import ServiceBusSettings
from operations.observability import redact
from store.settings import DatabaseSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET /callback?access_token=AT-1a2b3c&state=x", "AT-1a2b3c"),
        ("refresh_token=RT-9z8y7x", "RT-9z8y7x"),
        ("https://api.example.com/v1?auth=AU-55aa", "AU-55aa"),
        ("https://maps.example.com/geo?key=KY-77bb&q=x", "KY-77bb"),
        ('{"user": "bob", "password": "pw with spaces"}', "pw with spaces"),
        ('{"client_secret": "CS-\\"quoted\\"-1"}', 'CS-\\"quoted\\"-1'),
        ("{'password': 'py-repr-secret'}", "py-repr-secret"),
        ("x-api-key: XK-headersecret", "XK-headersecret"),
        ("posting to https://hooks.slack.com/services/T0001/B0001/SLACKTOKEN42", "SLACKTOKEN42"),
        (
            "https://acme.webhook.office.com/webhookb2/a1@b2/IncomingWebhook/TEAMS0token/c3",
            "TEAMS0token",
        ),
        ("https://discord.com/api/webhooks/1234/DISCORDtoken99?wait=true", "DISCORDtoken99"),
        ("https://alerts.example.com/hooks/HOOKtoken77", "HOOKtoken77"),
    ],
)
def test_redact_masks_tokens_keys_json_passwords_and_webhook_paths(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert "***" in masked


@pytest.mark.parametrize(
    "text",
    [
        "author=bob keyboard: qwerty",
        "run http://127.0.0.1:4200/runs/flow-run/7f3c9a1e-0b2d-4c55-9e61-3a7d5c2b1f00",
        "device=dev-1 event=device.ready",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_database_settings_repr_hides_the_password() -> None:
    settings = DatabaseSettings(url="postgresql+asyncpg://app:hunter2-db@db.example:5432/app")

    for shown in (repr(settings), str(settings), f"{settings}"):
        assert "hunter2-db" not in shown
        assert "postgresql+asyncpg://app:***@db.example:5432/app" in shown
    assert settings.url.endswith("app:hunter2-db@db.example:5432/app")  # callers get it whole


def test_servicebus_settings_repr_hides_connection_string_and_webhook() -> None:
    settings = ServiceBusSettings(
        connection_string="Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=SBkey123=",
        alert_webhook_url="https://hooks.slack.com/services/T1/B1/WEBHOOKtoken",
    )

    for shown in (repr(settings), str(settings)):
        assert "SBkey123" not in shown
        assert "WEBHOOKtoken" not in shown
    assert settings.alert_webhook_url is not None
    assert settings.alert_webhook_url.get_secret_value().endswith("WEBHOOKtoken")


@pytest.mark.parametrize(
    "value",
    ["KEYsecret-1,KEYsecret-2", '"KEYsecret-1"', '{"a": "KEYsecret-1"}', '["KEYsecret-1", 5]'],
)
def test_a_malformed_api_keys_setting_is_one_line_without_the_keys(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve-api", "--embedded"],
        cwd=REPO,
        env={**os.environ, "ORCH_API_API_KEYS": value, "ORCH_OTEL_EXPORTER": "none"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert "KEYsecret" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: invalid setting ORCH_API_API_KEYS:")
