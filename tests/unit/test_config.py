from __future__ import annotations

import threading
import tomllib
from pathlib import Path

import pytest

from daemon.config import load_settings, parse_settings
from daemon.errors import ConfigError
from daemon.models import Mode, OutputFormat, OutputSpec, Rgb

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_defaults_need_no_file() -> None:
    settings = load_settings(None)
    assert (settings.source.kind, settings.source.root) == ("local", "RemoveBGProcess")
    assert settings.engine.kind == "local"
    assert settings.ledger.url == ""
    assert settings.source.poll_interval == 30
    assert settings.source.recursive is False


def test_example_file_validates_and_documents_every_key() -> None:
    settings = load_settings(EXAMPLE)
    assert settings == parse_settings(tomllib.loads(EXAMPLE.read_text()), str(EXAMPLE))
    text = EXAMPLE.read_text()
    for section, values in _defaults_by_section().items():
        assert f"[{section}]" in text
        for key in values:
            assert f"\n{key} =" in text or f"# {key} =" in text, f"{section}.{key} undocumented"


def test_example_file_documents_every_notify_key() -> None:
    from dataclasses import fields

    from daemon.config_notify import NotifySettings

    text = EXAMPLE.read_text()
    assert "# [[notify]]" in text
    for key in (f.name for f in fields(NotifySettings) if f.name not in ("name",)):
        assert f"# {key} =" in text, f"notify.{key} undocumented"


def test_http_defaults_and_the_old_metrics_section() -> None:
    http = parse_settings({}).http
    assert (http.enabled, http.address, http.port, http.token_credential) == (
        True, "127.0.0.1", 9464, "",
    )  # fmt: skip
    old = parse_settings({"metrics": {"enabled": True, "address": "0.0.0.0", "port": 9100}})
    assert (old.http.enabled, old.http.address, old.http.port) == (True, "0.0.0.0", 9100)
    assert len(old.deprecations) == 1 and "[metrics] is deprecated" in old.deprecations[0]
    off = parse_settings({"metrics": {"enabled": False}})
    assert off.http.enabled is False
    both = parse_settings({"metrics": {"port": 9100}, "http": {"port": 9200}})
    assert both.http.port == 9200  # [http] wins
    assert parse_settings({"http": {"port": 1}}).deprecations == ()
    with pytest.raises(ConfigError) as caught:
        parse_settings({"metrics": {"port": 70000, "colour": 1}, "http": {"thumbnails": -1}})
    assert caught.value.problems == [
        "metrics.port: must be a TCP port, got 70000",
        "metrics.colour: unknown key",
        "http.thumbnails: must be 0 or more, got -1",
    ]


def test_notify_tables() -> None:
    settings = parse_settings({"notify": [
        {"kind": "webhook", "url_credential": "SLACK_HOOK", "batch_minutes": 1},
        {"kind": "email", "smtp_host": "mx", "sender": "a@b.c", "recipients": ["d@e.f"],
         "security": "tls", "username": "u", "password_credential": "SMTP_PW"},
    ]})  # fmt: skip
    hook, mail = settings.notify
    assert (hook.name, hook.url_credential, hook.batch_minutes) == ("webhook-1", "SLACK_HOOK", 1)
    assert (mail.name, mail.port, mail.digest_at) == ("email-2", 465, (8, 0))
    with pytest.raises(ConfigError) as caught:
        parse_settings({"notify": [
            {"kind": "webhook", "url": "https://hooks.slack.com/services/T/B/x"},
            {"kind": "email", "smtp_host": "mx", "username": "u", "password": "hunter2",
             "recipients": [], "digest_time": "25:00", "events": ["failed", "party"]},
            {"kind": "pigeon"},
        ]})  # fmt: skip
    assert caught.value.problems == [
        "notify[1].url: a webhook URL is a secret: put it in a credential, name it in url_credential",
        "notify[1].url_credential: required: the credential holding the webhook URL",
        "notify[2].events: must be a non-empty list of 'failed', 'degraded', 'recovered', 'digest', got ['failed', 'party']",
        "notify[2].digest_time: must be a local time like '08:00', got '25:00'",
        "notify[2].sender: required for kind = 'email'",
        "notify[2].recipients: required: a list of e-mail addresses",
        "notify[2].password_credential: required with username: the credential holding the password",
        "notify[2].password: secrets never go in the config file; set them in the environment or a systemd credential",
        "notify[3].kind: must be one of 'webhook', 'email', got 'pigeon'",
    ]


def _defaults_by_section() -> dict[str, list[str]]:
    from dataclasses import fields

    settings = load_settings(None)
    result: dict[str, list[str]] = {}
    for section in fields(settings):
        if section.name in ("config_path", "deprecations", "notify", "profiles"):
            continue
        keys = [f.name for f in fields(getattr(settings, section.name))]
        if section.name == "engine":
            keys = [k for k in keys if k != "options"] + [
                "mode",
                "output_format",
                "trim",
                "background_color",
            ]
        result[section.name] = keys
    result["[profile]"] = ["name", "match", "engine"]
    result["[profile.output]"] = [f.name for f in fields(OutputSpec)]
    return result


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({
            "source": {"kind": "ftp", "poll_interval": -1, "recursive": "yes"},
            "engine": {"mode": "blur", "background_color": "white", "workers": 0, "device": "tpu"},
            "archive": {"policy": "shred"},
            "log": {"level": "LOUD"},
            "bogus": {},
            "ledger": {"url": "mysql://x", "refresh_token": "abc"},
        })  # fmt: skip
    problems = caught.value.problems
    expected = ["source.kind:", "source.poll_interval:", "source.recursive:", "engine.mode:",
                "engine.background_color:", "engine.workers:", "engine.device:", "archive.policy:", "log.level:",
                "bogus: unknown section", "ledger.url:", "ledger.refresh_token: secrets never"]  # fmt: skip
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert "abc" not in str(caught.value)


def test_values_are_parsed() -> None:
    settings = parse_settings({
        "engine": {"mode": "mask", "output_format": "webp", "trim": True, "background_color": "#FF8000",
                   "device": "cpu"},
        "source": {"poll_interval": 5},
    })  # fmt: skip
    options = settings.engine.options
    assert (options.mode, options.output_format, options.trim) == (
        Mode.MASK,
        OutputFormat.WEBP,
        True,
    )
    assert options.background_color == Rgb(255, 128, 0)
    assert settings.source.poll_interval == 5.0
    assert settings.engine.device == "cpu"
    assert parse_settings({}).engine.device == "auto"


def test_photoshop_with_local_storage_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"engine": {"kind": "photoshop"}})
    assert any("Adobe must fetch each input by URL" in p for p in caught.value.problems)


def test_password_in_ledger_url_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"ledger": {"url": "postgresql+psycopg://u:hunter2@db/x"}})
    assert caught.value.problems[0].startswith("ledger.url: must not contain a password")


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[source\nkind=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_retry_delay_grows_and_caps() -> None:
    retry = parse_settings(
        {"retry": {"backoff_initial": 10, "backoff_multiplier": 3, "backoff_max": 60}}
    ).retry
    assert [retry.delay_after(n) for n in (1, 2, 3, 4)] == [10, 30, 60, 60]


def test_local_engine_memory_settings() -> None:
    from daemon.compose import build_engine

    assert (load_settings(None).engine.model_runs, load_settings(None).engine.idle_release) == (
        0,
        10.0,
    )
    settings = parse_settings({"engine": {"workers": 2, "model_runs": 1, "idle_release": 0}})
    engine = build_engine(settings, threading.Event())
    assert getattr(engine, "model_runs", None) == 1
    assert getattr(engine, "idle_release", "unset") is None  # 0: never release
    with pytest.raises(ConfigError) as caught:
        parse_settings({"engine": {"model_runs": -1, "idle_release": -5}})
    assert any(p.startswith("engine.model_runs:") for p in caught.value.problems)
    assert any(p.startswith("engine.idle_release:") for p in caught.value.problems)


PROFILES = """
[source]
recursive = true
[[profile]]
name = "amazon"
match = ["amazon/**"]
engine = "local"
[[profile.output]]
format = "jpeg"
canvas = "2000x2000"
fill = 0.85
[[profile.output]]
format = "webp"
trim = true
padding = "5%"
folder = "web"
[[profile]]
name = "shopify"
match = ["shopify/**", "*.png"]
[[profile.output]]
aspect = "1:1"
max_side = 2048
align = "bottom"
"""


def test_profiles_are_parsed_in_order() -> None:
    settings = parse_settings(tomllib.loads(PROFILES))
    amazon, shopify = settings.profiles
    assert (amazon.name, amazon.match, amazon.engine) == ("amazon", ("amazon/**",), "local")
    jpeg, webp = amazon.outputs
    assert (jpeg.format, jpeg.canvas, jpeg.fill, jpeg.background_color) == (
        OutputFormat.JPEG, (2000, 2000), 0.85, None,
    )  # fmt: skip
    assert (webp.trim, str(webp.padding), webp.folder) == (True, "5%", "web")
    assert (shopify.outputs[0].aspect, shopify.outputs[0].max_side) == ((1, 1), 2048)


def test_profile_problems_are_reported_with_the_others() -> None:
    text = PROFILES.replace("recursive = true", "recursive = false\npoll_interval = -1")
    text = text.replace('engine = "local"', 'engine = "local"\ncolour = "red"')
    text = text.replace('"2000x2000"', '"2000 by 2000"').replace("fill = 0.85", "fill = 1.5")
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(text))
    problems = caught.value.problems
    expected = [
        "source.poll_interval:",
        "profile.amazon.colour: unknown key",
        "profile.amazon.output[1].canvas: must be 'WxH'",
        "profile.amazon.output[1].fill: must be more than 0 and at most 1",
        "profile.amazon.match: 'amazon/**' can never match: source.recursive = false",
        "profile.shopify.match: 'shopify/**' can never match",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert not any("'*.png'" in p for p in problems)  # a top-level glob can match


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("padding = 10", "padding: is added around the trimmed subject"),
        ('format = "png"\nquality = 80', "quality: applies to webp and jpeg only"),
        ('canvas = "10x10"\naspect = "1:1"', "aspect: cannot be combined with canvas"),
        ('canvas = "10x10"\nmax_side = 5', "max_side: cannot be combined with canvas"),
        ("fill = 0.5", "fill: applies to canvas only"),
        ('aspect = "wide"', "aspect: must be 'W:H'"),
        ('padding = "5 percent"\ntrim = true', "padding: must be pixels"),
        ('mode = "mask"\nbackground_color = "#ffffff"', "background_color: has no effect"),
        ('folder = "../up"', "folder: must be a folder inside output/"),
        ('format = "gif"', "format: must be one of"),
    ],
)
def test_each_output_key_is_validated(output: str, problem: str) -> None:
    text = f'[[profile]]\nname = "p"\nmatch = ["*"]\n[[profile.output]]\n{output}\n'
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(text))
    assert any(p.startswith(f"profile.p.output[1].{problem}") for p in caught.value.problems), (
        caught.value.problems
    )


def test_two_outputs_in_one_file_and_photoshop_on_a_local_folder_are_refused() -> None:
    text = (
        '[[profile]]\nname = "p"\nmatch = ["*"]\nengine = "photoshop"\n'
        '[[profile.output]]\nformat = "png"\n[[profile.output]]\ntrim = true\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(text))
    problems = caught.value.problems
    assert any(p.startswith("profile.p.output[2]: same folder and format") for p in problems)
    assert any(p.startswith("profile.p.engine: the Photoshop engine needs") for p in problems)


def test_default_profile_is_the_engine_keys() -> None:
    settings = parse_settings({"engine": {"output_format": "webp", "trim": True}})
    (output,) = settings.default_profile.outputs
    assert (output.format, output.trim, output.folder) == (OutputFormat.WEBP, True, "")
