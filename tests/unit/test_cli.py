"""The CLI's pure parts: the password never comes from argv, progress arithmetic, JSON summary."""

import pytest

from pgmeta_cli.main import _fraction, build_parser, main, summary


def test_extract_refuses_to_run_without_pgpassword(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    assert main(["extract", "--host", "h", "--user", "u"]) == 2
    assert "PGPASSWORD" in capsys.readouterr().err


def test_there_is_no_password_option() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "--host", "h", "--user", "u", "--password", "x"])


def test_progress_fraction_moves_through_the_stages() -> None:
    assert _fraction({"status": "QUEUED"}) == 0.0
    assert _fraction({"status": "RUNNING", "stage": "extract"}) == 0.0
    half_extract = {"status": "RUNNING", "stage": "extract", "progress": {"stage": "extract", "done": 5, "total": 10}}
    assert _fraction(half_extract) == pytest.approx(1 / 6)
    assert _fraction({"status": "RUNNING", "stage": "publish"}) == pytest.approx(2 / 3)
    assert _fraction({"status": "COMPLETED", "stage": "done"}) == 1.0


def test_summary_has_exactly_the_documented_keys() -> None:
    run = {"run_id": "r", "status": "FAILED", "stage": "extract", "error": "boom", "progress": None}
    assert summary(run) == {
        "run_id": "r",
        "status": "FAILED",
        "counts": {},
        "changes": {},
        "schemas": {},
        "output": None,
        "error": "boom",
    }
