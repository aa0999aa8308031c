"""The transports: a JSON POST to a webhook, an e-mail over SMTP (STARTTLS or TLS).

Each `send` raises `SendError` with a message free of secrets (the webhook URL and the
password never appear in it) and returns when the message was accepted.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import urlsplit

import requests

from daemon.alerts.messages import Alert
from daemon.config_notify import NotifySettings
from daemon.secrets import redact, register_secret


class SendError(Exception):
    pass


class Sender(Protocol):
    def send(self, alert: Alert) -> None: ...


class WebhookSender:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url  # a secret (Slack's carry their token in the path): never logged
        self.timeout = timeout
        self.session = requests.Session()
        path = urlsplit(url).path
        if len(path) > 1:  # `requests` names the path alone in its errors
            register_secret(path)

    def send(self, alert: Alert) -> None:
        try:
            response = self.session.post(self.url, json=alert.payload(), timeout=self.timeout)
        except requests.RequestException as exc:
            # the exception's text names the URL: say only what went wrong
            raise SendError(f"webhook unreachable: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise SendError(f"webhook answered {response.status_code}")


class EmailSender:
    def __init__(self, settings: NotifySettings, password: str | None) -> None:
        self.settings = settings
        self.password = password

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        if s.security == "tls":
            return smtplib.SMTP_SSL(s.smtp_host, s.port, timeout=s.timeout, context=context)
        smtp = smtplib.SMTP(s.smtp_host, s.port, timeout=s.timeout)
        if s.security == "starttls":
            smtp.starttls(context=context)
        return smtp

    def send(self, alert: Alert) -> None:
        s = self.settings
        message = EmailMessage()
        message["Subject"] = alert.title
        message["From"] = s.sender
        message["To"] = ", ".join(s.recipients)
        message.set_content(alert.text.replace("*", ""))
        try:
            with self._connect() as smtp:
                if s.username:
                    smtp.login(s.username, self.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            text = str(exc)
            if self.password:
                text = text.replace(self.password, "<redacted>")
            raise SendError(f"SMTP {s.smtp_host}:{s.port}: {redact(text)}") from None
