"""The status page, /metrics and /healthz on one HTTP server (Flask + waitress + Jinja2).

Talks to the ledger only through `daemon.ledger.dashboard` (reads) and
`daemon.ledger.requeue` (Retry/Reprocess); every asset it serves ships in `static/`.
"""
