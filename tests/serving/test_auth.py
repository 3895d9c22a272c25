"""Where a server's API keys come from, how they are compared and how a key file is reloaded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from predictors.__main__ import main as predictors_main
from predictors.config import PredictorConfig
from serving.auth import ApiKeys, AuthConfig, AuthConfigError, bearer_token


def test_keys_come_from_the_variable_or_the_file_never_both(tmp_path: Path) -> None:
    assert not AuthConfig.from_sources({}, None).enabled
    config = AuthConfig.from_sources({"KZERO_API_KEYS": " k1, k2,,"}, None)
    assert [k.get_secret_value() for k in config.api_keys or ()] == ["k1", "k2"]
    with pytest.raises(AuthConfigError, match="KZERO_API_KEYS and --api_keys_file are both set"):
        AuthConfig.from_sources({"KZERO_API_KEYS": "k1"}, tmp_path / "keys")
    with pytest.raises(AuthConfigError, match="KZERO_API_KEYS is set but holds no key"):
        AuthConfig.from_sources({"KZERO_API_KEYS": " , "}, None)
    with pytest.raises(AuthConfigError, match="item 2 is not a usable key") as caught:
        AuthConfig.from_sources({"KZERO_API_KEYS": "k1,sec ret"}, None)
    assert "sec" not in str(caught.value)


def test_configs_never_show_a_key() -> None:
    auth = AuthConfig.from_sources({"KZERO_API_KEYS": "very-secret-1"}, None)
    config = PredictorConfig(model_name="m", task="embed", model_id="all-minilm-l6-v2", auth=auth)
    assert "very-secret-1" not in repr(config) and "very-secret-1" not in str(config.model_dump())
    assert "**********" in repr(config)


@pytest.mark.parametrize(("env", "file_text", "message"), [
    ({"KZERO_API_KEYS": "k1"}, "k2\n", "KZERO_API_KEYS and --api_keys_file are both set"),
    ({"KZERO_API_KEYS": ""}, None, "KZERO_API_KEYS is set but holds no key"),
    ({}, "# only a comment\n\n", "holds no key"),
    ({}, None, "cannot read it"),
])
def test_the_server_refuses_to_start_on_bad_key_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    env: dict[str, str], file_text: str | None, message: str,
) -> None:
    monkeypatch.delenv("KZERO_API_KEYS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    keys = tmp_path / "keys"
    if file_text is not None:
        keys.write_text(file_text)
    argv = ["--task", "embed", "--model_id", "all-minilm-l6-v2"]
    if file_text is not None or not env:
        argv += ["--api_keys_file", str(keys)]
    assert predictors_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_any_configured_key_is_accepted_and_nothing_else() -> None:
    keys = ApiKeys(["k-one", "k-two"])
    assert keys.accepts("k-one") and keys.accepts("k-two")
    for other in ("k-three", "k-on", "k-one ", "", "K-ONE"):
        assert not keys.accepts(other)


def test_bearer_credentials_are_parsed_case_insensitively() -> None:
    assert bearer_token("Bearer abc") == bearer_token("bearer  abc ") == "abc"
    for value in (None, "", "Basic abc", "Bearer", "Bearer   ", "abc"):
        assert bearer_token(value) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_file_is_reloaded_and_a_broken_one_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serving.auth")
    path = tmp_path / "keys"
    path.write_text("# rotated by Kubernetes\nold-key\n\n")
    clock = FakeClock()
    keys = ApiKeys.from_config(AuthConfig(api_keys_file=path), clock=clock)
    assert keys is not None
    path.write_text("new-key\nsecond-key\n")
    assert keys.accepts("old-key") and not keys.accepts("new-key")  # read at most once a second
    clock.now = 1.0
    assert keys.accepts("new-key") and keys.accepts("second-key") and not keys.accepts("old-key")
    path.unlink()
    for step in (2.0, 3.0):  # unreadable twice: the last good keys stay
        clock.now = step
        assert keys.accepts("new-key")
    path.write_text("\n# nothing\n")  # emptied: never "no keys", never "auth off"
    clock.now = 4.0
    assert keys.accepts("new-key")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping the 2 keys read before" in errors[0]  # logged once
    path.write_text("third-key\n")
    clock.now = 5.0
    assert keys.accepts("third-key") and not keys.accepts("new-key")
    assert "API keys reloaded from" in caplog.text
    for key in ("old-key", "new-key", "second-key", "third-key"):
        assert key not in caplog.text
