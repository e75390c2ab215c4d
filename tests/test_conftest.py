"""The test helpers' own behaviour: a missing ../shared asset skips locally, fails in CI."""

from __future__ import annotations

import pytest

from .conftest import require_shared


def test_require_shared_returns_a_present_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require_shared(tmp_path) == tmp_path


def test_a_missing_shared_path_skips_outside_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    missing = tmp_path / "models" / "absent"
    with pytest.raises(pytest.skip.Exception, match="absent"):
        require_shared(missing)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_shared(missing)


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_a_missing_shared_path_fails_under_ci_naming_it(tmp_path, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    missing = tmp_path / "models" / "absent"
    with pytest.raises(pytest.fail.Exception) as failure:
        require_shared(missing)
    assert str(missing) in str(failure.value)
