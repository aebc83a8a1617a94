"""The one typed configuration (server/config.py): defaults, CLI flags over environment variables
over defaults, bad values refused, and `--help` that documents every option with its env var."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.live import SERVER_MAIN, server_env
from pipelines import ModelOptions
from server.config import ENV_PREFIX, Config, parse

# Options and their environment variables, as (flag, environment variable).
OPTIONS = {
    "host": ("--host", "LIVE_DIFFUSION_HOST"),
    "port": ("--port", "LIVE_DIFFUSION_PORT"),
    "pipeline": ("--pipeline", "LIVE_DIFFUSION_PIPELINE"),
    "model id": ("--model-id", "LIVE_DIFFUSION_MODEL_ID"),
    "device": ("--device", "LIVE_DIFFUSION_DEVICE"),
    "dtype": ("--dtype", "LIVE_DIFFUSION_DTYPE"),
    "TAESD": ("--taesd", "LIVE_DIFFUSION_TAESD"),
    "compel": ("--compel", "LIVE_DIFFUSION_COMPEL"),
    "torch.compile": ("--torch-compile", "LIVE_DIFFUSION_TORCH_COMPILE"),
    "safety checker": ("--safety-checker", "LIVE_DIFFUSION_SAFETY_CHECKER"),
    "max users": ("--max-users", "LIVE_DIFFUSION_MAX_USERS"),
    "idle timeout": ("--idle-timeout", "LIVE_DIFFUSION_IDLE_TIMEOUT"),
    "max session length": ("--max-session-length", "LIVE_DIFFUSION_MAX_SESSION_LENGTH"),
    "JPEG quality": ("--jpeg-quality", "LIVE_DIFFUSION_JPEG_QUALITY"),
    "frame byte cap": ("--max-frame-bytes", "LIVE_DIFFUSION_MAX_FRAME_BYTES"),
    "frame pixel cap": ("--max-frame-pixels", "LIVE_DIFFUSION_MAX_FRAME_PIXELS"),
    "TLS cert": ("--ssl-certfile", "LIVE_DIFFUSION_SSL_CERTFILE"),
    "TLS key": ("--ssl-keyfile", "LIVE_DIFFUSION_SSL_KEYFILE"),
    "tiny": ("--tiny", "LIVE_DIFFUSION_TINY"),
    "log level": ("--log-level", "LIVE_DIFFUSION_LOG_LEVEL"),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No LIVE_DIFFUSION_* variable from the calling shell may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def field_of(error: ValidationError) -> set[str]:
    return {str(part) for e in error.errors() for part in e["loc"]}


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_keep_a_fresh_server_private_and_bounded():
    config = parse([])
    assert config.host == "127.0.0.1"  # nobody else can connect until --host says so
    assert config.max_users > 0 and config.max_viewers > 0  # users and viewers are bounded
    assert not config.allowed_origins  # no other web site's page may use it
    # The caps must let a normal camera frame (1920x1080, a few hundred kB) through.
    assert config.max_frame_pixels >= 1920 * 1080
    assert config.max_frame_bytes >= 1_000_000


def readme_options() -> dict[str, str]:
    """{flag: default cell} of the README's configuration table."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`LIVE_DIFFUSION") or len(cells) == 4 and cells[0] == "`--list-pipelines`":
            for flag in re.findall(r"`(--[a-z0-9-]+)`", cells[0]):
                rows[flag] = cells[2]
    return rows


def test_the_readme_lists_every_option_with_its_real_default():
    documented = readme_options()
    for name, field in Config.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in documented, f"{flag} is missing from the README's configuration table"
        cell, default = documented[flag], field.default
        if isinstance(default, bool):
            assert cell in ("on" if default else "off", ""), (flag, cell)
        elif isinstance(default, (int, float)):
            shown = re.match(r"`([-0-9.]+)`", cell)
            assert shown and float(shown.group(1)) == default, (flag, cell, default)
        elif isinstance(default, str) and default:
            assert cell.startswith(f"`{default}`"), (flag, cell, default)


# --- precedence: CLI > environment > default ---------------------------------------------------


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("LIVE_DIFFUSION_PORT", "9000")
    monkeypatch.setenv("LIVE_DIFFUSION_HOST", "0.0.0.0")
    monkeypatch.setenv("LIVE_DIFFUSION_TAESD", "false")
    monkeypatch.setenv("LIVE_DIFFUSION_TINY", "true")
    monkeypatch.setenv("LIVE_DIFFUSION_DTYPE", "float32")
    monkeypatch.setenv("LIVE_DIFFUSION_MAX_USERS", "3")
    monkeypatch.setenv("LIVE_DIFFUSION_MODEL_ID", "/models/mine")
    config = parse([])
    assert (config.port, config.host, config.taesd, config.tiny) == (9000, "0.0.0.0", False, True)
    assert (config.dtype, config.max_users, config.model_id) == ("float32", 3, "/models/mine")


def test_cli_flags_override_environment(monkeypatch):
    monkeypatch.setenv("LIVE_DIFFUSION_PORT", "9000")
    monkeypatch.setenv("LIVE_DIFFUSION_TAESD", "false")
    monkeypatch.setenv("LIVE_DIFFUSION_JPEG_QUALITY", "50")
    monkeypatch.setenv("LIVE_DIFFUSION_PIPELINE", "from-env")
    config = parse(["--port", "9001", "--taesd", "--jpeg-quality", "70", "--pipeline", "img2img"])
    assert (config.port, config.taesd, config.jpeg_quality, config.pipeline) == (9001, True, 70, "img2img")
    # ...and what the command line does not mention still comes from the environment.
    monkeypatch.setenv("LIVE_DIFFUSION_MAX_USERS", "4")
    assert parse(["--port", "9001"]).max_users == 4


def test_boolean_flags_both_ways():
    assert parse(["--no-taesd"]).taesd is False
    assert parse(["--tiny"]).tiny is True
    assert parse(["--torch-compile", "--no-compel"]).model_dump(include={"torch_compile", "compel"}) == {
        "torch_compile": True,
        "compel": False,
    }


# --- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, field",
    [
        (["--port", "70000"], "port"),
        (["--port", "-1"], "port"),
        (["--port", "http"], "port"),
        (["--jpeg-quality", "0"], "jpeg_quality"),
        (["--jpeg-quality", "101"], "jpeg_quality"),
        (["--dtype", "float8"], "dtype"),
        (["--device", "tpu"], "device"),
        (["--max-users", "-1"], "max_users"),
        (["--idle-timeout", "-5"], "idle_timeout"),
        (["--log-level", "loud"], "log_level"),
    ],
)
def test_bad_cli_values_are_refused_naming_the_option(args, field):
    with pytest.raises(ValidationError) as error:
        parse(args)
    assert field in field_of(error.value)


def test_ice_servers_are_stun_or_turn_with_credentials_and_reach_the_page():
    from server.live import settings_response
    from tests.fault_pipeline import Info, InputParams

    urls = ["stun:stun.example.com:3478", "turn:alice:pa:ss@turn.example.com:3478?transport=tcp"]
    assert parse([arg for url in urls for arg in ("--ice-servers", url)]).ice_servers == urls
    settings = settings_response(Info, InputParams, 8, urls)
    assert settings.ice_servers == [
        {"urls": "stun:stun.example.com:3478"},
        {"urls": "turn:turn.example.com:3478?transport=tcp", "username": "alice", "credential": "pa:ss"},
    ]
    for bad, reason in [("turn:turn.example.com:3478", "needs USER:PASSWORD@"), ("http://stun.example.com", "not stun:"),
                        ("turn:@host:1", "expected turn:USER:PASSWORD@HOST")]:
        with pytest.raises(ValidationError, match=reason):
            parse(["--ice-servers", bad])


def test_bad_environment_values_are_refused(monkeypatch):
    monkeypatch.setenv("LIVE_DIFFUSION_PORT", "70000")
    with pytest.raises(ValidationError) as error:
        parse([])
    assert "port" in field_of(error.value)


@pytest.mark.parametrize("args", [["--ssl-certfile", "cert.pem"], ["--ssl-keyfile", "key.pem"]])
def test_tls_needs_both_cert_and_key(args):
    with pytest.raises(ValidationError, match="ssl-certfile and --ssl-keyfile"):
        parse(args)


def test_tls_with_both_cert_and_key():
    config = parse(["--ssl-certfile", "cert.pem", "--ssl-keyfile", "key.pem"])
    assert (config.ssl_certfile, config.ssl_keyfile) == ("cert.pem", "key.pem")


def test_configuration_is_frozen():
    config = parse([])
    with pytest.raises(ValidationError):
        config.port = 1


def run_main(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVER_MAIN), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(**env),
        cwd="/",  # from any working directory
    )


@pytest.mark.parametrize("args", [["--port", "70000"], ["--ssl-certfile", "cert.pem"]], ids=["port", "tls"])
def test_bad_value_on_the_command_line_is_a_usage_error_not_a_traceback(args):
    result = run_main(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert args[0].lstrip("-").split("-")[-1] in output  # names the option


def test_unknown_flag_is_a_usage_error():
    result = run_main("--prot", "7861")
    assert result.returncode == 2
    assert "--prot" in result.stderr and "Traceback" not in result.stderr


# --- --help -------------------------------------------------------------------------------------


def help_blocks(text: str) -> dict[str, str]:
    """'--flag' -> its help entry (first line and continuation lines), from argparse's output."""
    blocks: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):
            current = [line]
            flags = line.strip().split("  ")[0]
            for flag in flags.split(", "):
                blocks[flag.split(" ")[0]] = current  # type: ignore[assignment]
        elif line.startswith("    ") and current:
            current.append(line)
        else:
            current = []
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in blocks.items()}


def test_help_lists_every_option_with_its_environment_variable():
    result = run_main("--help", COLUMNS="300")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    blocks = help_blocks(result.stdout)
    missing = [name for name, (flag, _) in OPTIONS.items() if flag not in blocks]
    assert not missing, f"--help lacks {missing}:\n{result.stdout}"
    for name, (flag, env) in OPTIONS.items():
        assert f"[env: {env}]" in blocks[flag], f"{name}: {blocks[flag]!r}"
    assert "--no-taesd" in blocks  # TAESD can be turned off
    assert "(default: 127.0.0.1)" in blocks["--host"]
    assert "(default: 7860)" in blocks["--port"]
    assert "(default: img2img)" in blocks["--pipeline"]
    for choice in ("auto", "cuda", "mps", "xpu", "cpu"):
        assert choice in blocks["--device"]
    for choice in ("float16", "bfloat16", "float32"):
        assert choice in blocks["--dtype"]
    assert "safetensors" in blocks["--model-id"]  # says a single-file checkpoint is accepted


def test_help_starts_nothing_and_is_quick():
    result = run_main("--help")
    assert result.returncode == 0
    assert "Loading" not in result.stdout + result.stderr and "Open http" not in result.stdout + result.stderr


# --- what pipelines get -------------------------------------------------------------------------


def test_model_options_carry_the_model_fields():
    config = parse(
        [
            "--model-id", "/models/mine.safetensors",
            "--model-config-id", "/models/config",
            "--tiny", "--no-taesd", "--no-compel", "--torch-compile", "--safety-checker",
        ]
    )
    options = config.model_options()
    assert isinstance(options, ModelOptions)
    assert options.model_dump(
        include={"model_id", "model_config_id", "tiny", "taesd", "compel", "torch_compile", "safety_checker"}
    ) == {
        "model_id": "/models/mine.safetensors",
        "model_config_id": "/models/config",
        "tiny": True,
        "taesd": False,
        "compel": False,
        "torch_compile": True,
        "safety_checker": True,
    }


def test_model_options_defaults_follow_the_configuration_defaults():
    config, options = parse([]), parse([]).model_options()
    for name in ("model_id", "model_config_id", "tiny", "taesd", "compel", "torch_compile", "safety_checker"):
        assert getattr(options, name) == getattr(config, name), name
    assert options.taesd is True and options.tiny is False and options.model_id == ""


def test_config_class_reads_only_its_prefix(monkeypatch):
    monkeypatch.setenv("PORT", "1234")  # a generic name, as set by some hosts, must not be picked up
    assert Config().port == 7860
