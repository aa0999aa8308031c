"""Notifications (`[[notify]]`): webhooks and e-mail for failures, trouble, recovery and a
daily digest. (`daemon.notify` is systemd's sd_notify, a different thing.)

- `messages`: what each event says, as text a chat renders plus structured fields.
- `senders`: the webhook (requests) and e-mail (smtplib) transports.
- `dispatch`: a thread that sends with retries and backoff, and records each outcome;
  the pipeline never waits on it.
- `watch`: the pipeline observer that decides when to say what (batching, thresholds,
  the digest's time), driven by `tick()` with an injected clock.
"""
