"""Output options are validated at config load, with the file:line:col of the bad key."""

from __future__ import annotations

import textwrap

import pytest

from sentinel import config
from sentinel.actions.forward.settings import Secret, SecretRef, SplunkHECSettings, SyslogSettings, parse_output
from sentinel.errors import ConfigError


def load(tmp_path, text: str):
    path = tmp_path / "sentinel.yaml"
    path.write_text(textwrap.dedent(text))
    return config.load(path), str(path)


def load_error(tmp_path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def test_valid_outputs_load_and_parse(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    loaded, _ = load(
        tmp_path,
        """
        outputs:
          - name: soc
            type: syslog
            protocol: relp
            host: siem.example
            min_priority: warning
            tags: [mitre_execution]
          - name: splunk
            type: splunk_hec
            url: https://splunk.example:8088
            token_file: %s/token
        """ % tmp_path,
    )
    soc, splunk = (parse_output(o.name, o.type, o.options) for o in loaded.outputs)
    assert isinstance(soc, SyslogSettings) and soc.effective_port == 2514
    assert soc.record_filter.min_priority == "warning" and soc.record_filter.tags == {"mitre_execution"}
    assert isinstance(splunk, SplunkHECSettings)
    assert splunk.token.resolve().reveal() == "s3cret"


def test_unknown_option_names_its_line_and_column(tmp_path):
    error = load_error(
        tmp_path,
        """
        outputs:
          - name: soc
            type: syslog
            protcol: tcp
        """,
    )
    assert error.location.line == 5 and error.location.col == 5
    assert "unknown option 'protcol' for type syslog (did you mean 'protocol'? known: " in str(error)


@pytest.mark.parametrize(
    "option, message",
    [
        ("protocol: sctp", "expected one of udp, tcp, tls, relp, relp-tls"),
        ("port: '514'", "port: expected an integer"),
        ("port: -1", "must be positive"),
        ("min_priority: loud", "expected one of emergency"),
        ("max_message_bytes: 70000", "a UDP datagram carries at most 65507"),
        ("facility: local9", "facility: expected one of"),
        ("events: yes please", "expected true or false"),
    ],
)
def test_bad_values_are_located_errors(tmp_path, option, message):
    text = "outputs:\n  - name: soc\n    type: syslog\n    %s\n" % option
    error = load_error(tmp_path, text)
    assert message in str(error)
    assert error.location.line == 4, str(error)


def test_unknown_type_and_missing_requirements(tmp_path):
    error = load_error(tmp_path, "outputs:\n  - name: x\n    type: kafka\n")
    assert "unknown type 'kafka'" in str(error) and error.location.line == 2
    error = load_error(tmp_path, "outputs:\n  - name: x\n    type: splunk_hec\n    url: http://h:8088\n")
    assert "token_file or token_env" in str(error)
    error = load_error(tmp_path, "outputs:\n  - name: x\n    type: webhook\n    url: ftp://h\n")
    assert "url: expected http(s)" in str(error) and error.location.line == 4


def test_inline_secrets_are_refused(tmp_path):
    error = load_error(tmp_path, "outputs:\n  - name: x\n    type: splunk_hec\n    url: http://h\n    token: abc\n")
    assert "inline `token` is not accepted; use `token_file` or `token_env`" in str(error)
    assert error.location.line == 5
    assert "abc" not in str(error)


def test_secret_from_env_and_redacted_repr(monkeypatch):
    monkeypatch.setenv("HEC_TOKEN", "top-secret-value")
    secret = SecretRef(env="HEC_TOKEN").resolve()
    assert secret.reveal() == "top-secret-value"
    assert "top-secret-value" not in repr(secret) and "top-secret-value" not in str(secret)
    assert repr(secret) == "Secret(env:HEC_TOKEN, ***)"
    assert isinstance(secret, Secret)


def test_missing_secret_sources_are_clear_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="NOPE_TOKEN .* is not set"):
        SecretRef(env="NOPE_TOKEN").resolve()
    with pytest.raises(ConfigError, match="cannot read secret file"):
        SecretRef(file=str(tmp_path / "missing")).resolve()


def test_output_names_are_unique(tmp_path):
    error = load_error(tmp_path, "outputs:\n  - name: a\n    type: jsonfile\n    path: /x\n"
                                 "  - name: a\n    type: jsonfile\n    path: /y\n")
    assert "output name 'a' is used twice" in str(error) and error.location.line == 5
