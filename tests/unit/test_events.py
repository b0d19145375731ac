import pytest
from pydantic import ValidationError

from pgmeta_shared.events import ExtractionRequested, Stage, StageFailed
from pgmeta_shared.naming import default_connection_qualified_name

VALID = {
    "request_id": "demo-1",
    "source": {"host": "db.example.com", "username": "postgres", "database": "shop"},
    "credentials": {"kind": "secret", "store": "secretstore", "key": "demo-postgres"},
}


def test_valid_request_gets_defaults() -> None:
    event = ExtractionRequested.model_validate(VALID)
    assert event.schema_version == 1
    assert event.source.port == 5432
    assert event.source.sslmode == "prefer"
    assert event.connection_qualified_name is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"password": "hunter2"}, "password"),  # extra fields are refused: a password has no place here
        ({"request_id": "has space"}, "request_id"),
        ({"request_id": ""}, "request_id"),
        ({"schema_version": 2}, "schema_version"),
        ({"connection_qualified_name": "default/mysql/1"}, "connection_qualified_name"),
        ({"source": {"host": "h", "username": "u", "port": 70000}}, "source.port"),
        ({"credentials": {"kind": "inline", "store": "s", "key": "k"}}, "credentials.kind"),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExtractionRequested.model_validate(VALID | change)
    locations = {".".join(str(p) for p in error["loc"]) for error in info.value.errors()}
    assert any(loc.startswith(field) for loc in locations), locations


def test_events_are_frozen() -> None:
    event = StageFailed(run_id="r1", stage=Stage.EXTRACT, error_code="x", error="boom")
    with pytest.raises(ValidationError):
        event.error = "changed"


def test_default_connection_qualified_name_is_stable_and_atlan_shaped() -> None:
    first = default_connection_qualified_name("DB.example.com", 5432)
    assert first == default_connection_qualified_name("db.example.com ", 5432)
    assert first != default_connection_qualified_name("db.example.com", 5433)
    prefix, connector, digits = first.split("/")
    assert (prefix, connector) == ("default", "postgres")
    assert digits.isdigit() and len(digits) == 10
    ExtractionRequested.model_validate(VALID | {"connection_qualified_name": first})
