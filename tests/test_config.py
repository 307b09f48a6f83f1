"""The configuration module: parsing, validation, overrides, and the README table."""

from __future__ import annotations

import pathlib
import sys
import threading

import pytest

from convflow import ConfigError, config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_defaults(monkeypatch):
    for name in config.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert config.get("CONVFLOW_BACKEND") == ()
    assert config.get("CONVFLOW_WORKSPACE_MB") == 64
    assert config.get("CONVFLOW_LOG") == "warning"
    assert config.get("CONVFLOW_NUMBA_CACHE") is True
    assert not config.is_set("CONVFLOW_BACKEND")


@pytest.mark.parametrize("name, text, value", [
    ("CONVFLOW_BACKEND", " Numba , opencl ", ("numba", "opencl")),
    ("CONVFLOW_BACKEND", "", ()),
    ("CONVFLOW_WORKSPACE_MB", "16", 16),
    ("CONVFLOW_NUM_THREADS", "0", 0),
    ("CONVFLOW_LOG", "DEBUG", "debug"),
    ("CONVFLOW_NUMBA_CACHE", "off", False),
    ("CONVFLOW_NUMBA_CACHE", "Yes", True),
])
def test_parsing(monkeypatch, name, text, value):
    monkeypatch.setenv(name, text)
    assert config.get(name) == value
    assert config.is_set(name)


@pytest.mark.parametrize("name, text, match", [
    ("CONVFLOW_WORKSPACE_MB", "0", r"CONVFLOW_WORKSPACE_MB='0' is invalid: expected an integer >= 1"),
    ("CONVFLOW_WORKSPACE_MB", "1e3", r"expected an integer >= 1"),
    ("CONVFLOW_NUM_THREADS", "-1", r"expected an integer >= 0"),
    ("CONVFLOW_LOG", "verbose", r"CONVFLOW_LOG='verbose' is invalid: expected one of debug, info, warning, error"),
    ("CONVFLOW_LOG", "debg", r"\(did you mean 'debug'\?\)"),
    ("CONVFLOW_NUMBA_CACHE", "maybe", r"expected one of 1, 0, true, false"),
    ("CONVFLOW_BACKEND", "numba;opencl", r"expected a comma-separated list of names"),
])
def test_invalid_values_name_the_variable(monkeypatch, name, text, match):
    monkeypatch.setenv(name, text)
    with pytest.raises(ConfigError, match=match):
        config.get(name)


def test_unknown_variable():
    with pytest.raises(ConfigError, match=r"unknown configuration variable 'CONVFLOW_BACKNED' "
                                          r"\(did you mean 'CONVFLOW_BACKEND'\?\)"):
        config.get("CONVFLOW_BACKNED")
    with pytest.raises(ConfigError):
        with config.override(CONVFLOW_NOPE=1):
            pass


def test_override_is_scoped_and_validated(monkeypatch):
    monkeypatch.setenv("CONVFLOW_WORKSPACE_MB", "32")
    with config.override(CONVFLOW_WORKSPACE_MB=8, CONVFLOW_BACKEND=["numba"]):
        assert config.get("CONVFLOW_WORKSPACE_MB") == 8
        assert config.get("CONVFLOW_BACKEND") == ("numba",)
        with config.override(CONVFLOW_WORKSPACE_MB="4"):
            assert config.get("CONVFLOW_WORKSPACE_MB") == 4
        assert config.get("CONVFLOW_WORKSPACE_MB") == 8
    assert config.get("CONVFLOW_WORKSPACE_MB") == 32
    with pytest.raises(ConfigError, match="override CONVFLOW_WORKSPACE_MB='-3' is invalid"):
        with config.override(CONVFLOW_WORKSPACE_MB=-3):
            pass


def test_override_is_per_thread():
    seen = {}
    with config.override(CONVFLOW_WORKSPACE_MB=2):
        thread = threading.Thread(target=lambda: seen.setdefault("other", config.get("CONVFLOW_WORKSPACE_MB")))
        thread.start()
        thread.join()
        assert config.get("CONVFLOW_WORKSPACE_MB") == 2
    assert seen["other"] == config.VARIABLES["CONVFLOW_WORKSPACE_MB"].default or "CONVFLOW_WORKSPACE_MB" in __import__("os").environ


def test_every_variable_is_documented():
    for variable in config.VARIABLES.values():
        assert variable.name.startswith("CONVFLOW_")
        assert len(variable.help) > 40 and variable.type


def test_readme_table_is_generated_from_config():
    sys.path.insert(0, str(ROOT / "ci"))
    import readme_tables

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_tables.render(text) == text, "README is stale: run `make readme`"
    for name in config.VARIABLES:
        assert f"`{name}`" in text


def test_every_convflow_variable_in_the_code_is_declared():
    """No module reads a CONVFLOW_* variable that config.py does not declare."""
    import re

    used = set()
    for path in (ROOT / "convflow").rglob("*.py"):
        used |= set(re.findall(r"CONVFLOW_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
    assert used <= set(config.VARIABLES), used - set(config.VARIABLES)
