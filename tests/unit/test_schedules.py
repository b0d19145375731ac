"""Schedule timing and tick handling, with an in-memory platform, a fake scheduler and a controlled clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from pgmeta_orchestrator import schedule_timing as timing
from pgmeta_orchestrator.connections import ConnectionSpec, ConnectionStore, ResolvedSource, SourcePolicy
from pgmeta_orchestrator.runs import RunRequest, RunView
from pgmeta_orchestrator.schedules import ScheduleService, ScheduleSpec, run_id_for, schedule_of_run
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_shared.errors import InvalidRequestError
from pgmeta_shared.events import ExtractionCompleted, TopicName
from tests.fakes import InMemoryPlatform, route_cli_to
from tests.unit.api_harness import SCHEDULE, Api, FakeJobs

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def test_every_ticks_count_from_the_anchor() -> None:
    assert timing.next_due("@every 5s", "UTC", T0, T0) == T0 + timedelta(seconds=5)
    assert timing.next_due("@every 5s", "UTC", T0, T0 + timedelta(seconds=7.5)) == T0 + timedelta(seconds=10)
    assert timing.next_due("@every 1h30m", "UTC", T0, T0 - timedelta(hours=1)) == T0


def test_cron_is_read_in_the_schedule_time_zone_across_dst() -> None:
    # 02:30 Paris does not exist on 2026-03-29 (clocks jump 02:00 → 03:00): cronsim runs it at 03:00 local.
    after = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = timing.next_due("30 2 * * *", "Europe/Paris", T0, after)
    second = timing.next_due("30 2 * * *", "Europe/Paris", T0, first)
    assert first == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert second == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert timing.next_due("@daily", "America/New_York", T0, T0) == datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    assert timing.next_due("*/10 * * * * *", "UTC", T0, T0) == T0 + timedelta(seconds=10)  # seconds first


@pytest.mark.parametrize(
    ("expression", "zone", "problem"),
    [
        ("every day", "UTC", "cron"),
        ("@every 0s", "UTC", "1 s"),
        ("@every soon", "UTC", "duration"),
        ("61 * * * *", "UTC", "invalid cron"),
        ("@daily", "Mars/Olympus", "time zone"),
    ],
)
def test_bad_schedules_name_the_problem(expression: str, zone: str, problem: str) -> None:
    with pytest.raises(timing.ScheduleSpecError, match=problem):
        timing.validate(expression, zone)


def test_jitter_is_stable_and_bounded() -> None:
    offsets = {timing.jitter_offset("s", T0 + timedelta(hours=h), 60) for h in range(50)}
    assert all(timedelta(0) <= o <= timedelta(seconds=60) for o in offsets) and len(offsets) > 10
    assert timing.jitter_offset("s", T0, 60) == timing.jitter_offset("s", T0, 60)
    assert timing.jitter_offset("s", T0, 0) == timedelta(0)


def test_run_ids_carry_schedule_and_tick() -> None:
    run_id = run_id_for("nightly-crm", T0)
    assert run_id == "sched-nightly-crm-20261129T120000Z"
    assert schedule_of_run(run_id) == ("nightly-crm", T0)
    assert schedule_of_run("run-abc") is None


class FakeRuns:
    """RunService's submit and view: submitted runs stay RUNNING until ``finish``."""

    def __init__(self, platform: InMemoryPlatform) -> None:
        self.platform = platform
        self.status: dict[str, str] = {}
        self.resolved: list[tuple[ResolvedSource, str | None]] = []

    def submit(self, body: Any, resolved: ResolvedSource, started_by: str | None = None) -> str:
        self.resolved.append((resolved, started_by))
        self.platform.publish(TopicName.EXTRACTION_REQUESTED, body)
        self.status.setdefault(body.request_id, "RUNNING")
        return str(body.request_id)

    def view(self, run_id: str) -> RunView | None:
        status = self.status.get(run_id)
        return RunView(run_id=run_id, status=status) if status else None  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def connections(platform: InMemoryPlatform) -> ConnectionStore:
    store = ConnectionStore(platform, "registry")
    source = {"host": "db", "port": 5432, "username": "u", "database": "shop"}
    store.put("shop", ConnectionSpec.model_validate({"source": source, "secret": {"key": "db"}}), "admin")
    return store


def make(**spec: Any) -> tuple[ScheduleService, InMemoryPlatform, FakeJobs, FakeRuns, Clock]:
    platform, jobs, clock = InMemoryPlatform(), FakeJobs(), Clock()
    runs = FakeRuns(platform)
    service = ScheduleService(
        platform,
        jobs,
        runs,  # type: ignore[arg-type]
        OrchestratorSettings(),
        SourcePolicy(connections(platform), ["*"], None),
        clock=clock,
    )
    body = {"schedule_id": "s1", "schedule": "@every 5s", "connection": "shop", **spec}
    service.create(ScheduleSpec.model_validate(body))
    return service, platform, jobs, runs, clock


def started(platform: InMemoryPlatform) -> list[str]:
    return [e.request_id for t, e in platform.published if t == TopicName.EXTRACTION_REQUESTED]  # type: ignore[attr-defined]


def fire(service: ScheduleService, jobs: FakeJobs, clock: Clock, late: float = 0.2) -> Any:
    """Fires the pending job, as the scheduler would, ``late`` seconds after it is due."""
    (name, (at, data)) = next(iter(jobs.jobs.items()))
    del jobs.jobs[name]
    clock.now = at + timedelta(seconds=late)
    return service.on_trigger(data["schedule_id"], datetime.fromisoformat(data["due"]))


def test_a_tick_starts_one_run_and_arms_the_next_even_when_delivered_twice() -> None:
    service, platform, jobs, _runs, clock = make()
    assert list(jobs.jobs) == ["pgmeta-schedule-s1-20261129T120005Z"]
    assert fire(service, jobs, clock) == "started"
    assert started(platform) == ["sched-s1-20261129T120005Z"]
    assert list(jobs.jobs) == ["pgmeta-schedule-s1-20261129T120010Z"]
    # The same tick again (a redelivery, or the other replica): nothing new.
    assert service.on_trigger("s1", T0 + timedelta(seconds=5)) is None
    assert started(platform) == ["sched-s1-20261129T120005Z"]
    view = service.get("s1")
    assert view is not None and view.next_due == (T0 + timedelta(seconds=10)).isoformat()
    assert [t.outcome for t in view.last_runs] == ["started"]


def test_overlap_skip_and_queue() -> None:
    service, platform, jobs, runs, clock = make()
    fire(service, jobs, clock)
    assert fire(service, jobs, clock) == "skipped_overlap"
    assert len(started(platform)) == 1

    service, platform, jobs, runs, clock = make(overlap="queue")
    fire(service, jobs, clock)
    assert fire(service, jobs, clock) == "queued"
    assert fire(service, jobs, clock) == "queued"  # coalesces into one queued run
    first = started(platform)[0]
    runs.status[first] = "COMPLETED"
    service.on_run_finished(ExtractionCompleted(run_id=first, status="COMPLETED"))
    assert started(platform) == [first, "sched-s1-20261129T120015Z"]
    outcomes = [t.outcome for t in service.get("s1").last_runs]  # type: ignore[union-attr]
    assert outcomes.count("started_from_queue") == 1


def test_missed_tick_runs_once_or_is_skipped_and_no_backlog_is_kept() -> None:
    service, platform, jobs, _runs, clock = make()
    assert fire(service, jobs, clock, late=3600) == "started"  # one run for the hour of downtime
    next_at, _ = next(iter(jobs.jobs.values()))
    assert next_at > clock.now  # the next tick is in the future, not one of the 700 missed ones

    service, platform, jobs, _runs, clock = make(missed="skip")
    assert fire(service, jobs, clock, late=3600) == "skipped_missed"
    assert started(platform) == []


def test_reconcile_handles_an_overdue_tick_whose_trigger_never_came() -> None:
    service, platform, jobs, _runs, clock = make()
    jobs.jobs.clear()  # the trigger was lost
    clock.now = T0 + timedelta(minutes=5)
    service.reconcile()
    assert started(platform) == ["sched-s1-20261129T120005Z"]
    assert len(jobs.jobs) == 1


def test_pause_resume_delete() -> None:
    service, platform, jobs, _runs, clock = make()
    assert service.pause("s1") is not None and jobs.jobs == {}
    clock.now = T0 + timedelta(minutes=1)
    service.reconcile()
    assert jobs.jobs == {}
    resumed = service.resume("s1")
    assert resumed is not None and resumed.next_due == (T0 + timedelta(minutes=1, seconds=5)).isoformat()
    assert service.delete("s1") and jobs.jobs == {} and service.get("s1") is None
    assert service.on_trigger("s1", T0 + timedelta(minutes=1, seconds=5)) is None
    assert started(platform) == []


def test_a_schedule_names_a_registered_connection_and_never_a_password_or_secret() -> None:
    body = {"schedule": "@daily", "connection": "shop"}
    for smuggled in (
        {"password": "hunter2"},
        {"credentials": {"kind": "secret", "store": "secretstore", "key": "someone-elses"}},
        {"source": {"host": "attacker.example", "username": "u"}},
        {"connection_qualified_name": "default/postgres/victim"},
    ):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            ScheduleSpec.model_validate(body | smuggled)
    service, _platform, _jobs, _runs, _clock = make()
    with pytest.raises(InvalidRequestError, match="no-such-connection"):
        service.create(ScheduleSpec.model_validate(body | {"connection": "no-such-connection"}))


def test_runs_submitted_are_extraction_requests_of_the_connection() -> None:
    service, platform, jobs, runs, clock = make(filters={"include": {"shop": "*"}}, stage_timeout_seconds=60)
    fire(service, jobs, clock)
    body = platform.published[0][1]
    assert isinstance(body, RunRequest)
    assert body.connection == "shop" and body.password is None and body.stage_timeout_seconds == 60
    resolved, started_by = runs.resolved[0]
    # The server bound the source and the secret from the registered connection, not from the schedule.
    assert resolved.source.host == "db" and resolved.secret is not None and resolved.secret.key == "db"
    assert resolved.connection_qualified_name.endswith("/shop") and started_by == "schedule:s1"


def test_rest_routes_and_the_job_trigger(api: Api) -> None:
    schedules = api.client.app.state.schedules  # type: ignore[attr-defined]
    jobs: FakeJobs = schedules._jobs
    clock = Clock()
    schedules._now = clock
    operator = {"Authorization": f"Bearer {api.tokens['operator']}"}
    viewer = {"Authorization": f"Bearer {api.tokens['viewer']}"}
    client = api.client
    body = SCHEDULE | {"schedule_id": "s2", "schedule": "0 2 * * *", "time_zone": "Europe/Paris"}
    created = client.post("/schedules", json=body, headers=operator)
    assert created.status_code == 201 and created.json()["next_due"] == "2026-11-30T01:00:00+00:00"
    assert created.json()["created_by"] == "token:a operator"
    assert client.post("/schedules", json=body, headers=operator).status_code == 201
    assert client.post("/schedules", json={**body, "schedule": "@hourly"}, headers=operator).status_code == 409
    assert client.post("/schedules", json=body, headers=viewer).status_code == 403
    assert {s["schedule_id"] for s in client.get("/schedules", headers=viewer).json()} == {"s2"}
    assert client.get("/schedules/nope", headers=viewer).status_code == 404
    refused = client.post("/schedules", json={**body, "password": "hunter2"}, headers=operator)
    assert refused.status_code == 422 and "hunter2" not in refused.text
    unknown = client.post("/schedules", json={**body, "connection": "nope"}, headers=operator)
    assert unknown.status_code == 422 and "nope" in unknown.text

    name = "pgmeta-schedule-s2-20261130T010000Z"
    assert name in jobs.jobs
    clock.now = datetime(2026, 11, 30, 1, 0, 1, tzinfo=UTC)
    fired = client.post(f"/job/{name}", json=jobs.jobs[name][1])
    assert fired.json() == {"status": "started"}
    assert client.post(f"/job/{name}", json={"nonsense": 1}).json() == {"status": "dropped"}
    assert client.get("/schedules/s2", headers=viewer).json()["last_runs"][0]["run_id"] == "sched-s2-20261130T010000Z"
    assert client.get("/runs/sched-s2-20261130T010000Z", headers=viewer).json()["started_by"] == "schedule:s2"
    assert client.post("/schedules/s2/pause", headers=operator).json()["paused"] is True
    assert client.delete("/schedules/s2", headers=viewer).status_code == 403
    assert client.delete("/schedules/s2", headers=operator).status_code == 204
    assert client.delete("/schedules/s2", headers=operator).status_code == 404
    actions = [(r["action"], r["outcome"]) for r in api.audit() if r["action"].startswith("schedule")]
    assert ("schedule.create", "allowed") in actions and ("schedule.delete", "allowed") in actions


def test_a_tick_of_a_removed_connection_fails_visibly_and_the_schedule_keeps_ticking() -> None:
    service, platform, jobs, _runs, clock = make()
    ConnectionStore(platform, "registry").delete("shop")
    assert fire(service, jobs, clock) == "started"
    assert started(platform) == []
    tick = service.get("s1").last_runs[0]  # type: ignore[union-attr]
    assert tick.status == "FAILED" and tick.error is not None and "shop" in tick.error
    assert len(jobs.jobs) == 1  # the next tick is armed


def test_the_cli_adds_a_schedule_of_a_registered_connection(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pgmeta_cli import main as cli
    from tests.unit.test_request_ids import _no_lifespan

    api.client.app.router.lifespan_context = _no_lifespan  # type: ignore[attr-defined]  # the CLI enters it
    api.client.headers.update({"Authorization": f"Bearer {api.tokens['operator']}"})
    route_cli_to(monkeypatch, api.client)
    monkeypatch.setenv("PGMETA_API_URL", "http://testserver")
    argv = ["schedules", "add", "--id", "nightly", "--schedule", "@daily", "--connection", "demo", "--json"]
    assert cli.main(argv) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["spec"]["connection"] == "demo" and created["created_by"] == "token:a operator"
    assert cli.main(["schedules", "add", "--schedule", "@daily", "--connection", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["schedules", "list"]) == 0
    listed = capsys.readouterr().out
    assert "nightly" in listed and "demo/*" in listed
