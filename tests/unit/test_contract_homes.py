"""Every contract has one home: key strings only in keys.py, topic names only in topics.py.

A key or topic spelled by hand in a second module is how a rename silently breaks another service.
"""

from __future__ import annotations

import re
from pathlib import Path

from pgmeta_shared.events import TOPICS, ServiceName, TopicName, consumed_by, published_by, stage_topic

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = [ROOT / "services", ROOT / "shared", ROOT / "deploy" / "local"]
KEYS_HOME = ROOT / "shared" / "pgmeta_shared" / "keys.py"
TOPICS_HOME = ROOT / "shared" / "pgmeta_shared" / "topics.py"

# Shapes of artifacts keys and chunk part names: run-scoped f-strings, fixed prefixes, marker suffixes.
KEY_SHAPES = re.compile(
    r"""f["']\{(run_id|request_id|command\.run_id)\}/"""
    r"""|["'](snapshot|cred|runs|schedules|retention)/"""
    r"""|/(result|done|failed|requested|progress)["']"""
    r"""|["'](entity|extra):"""
    r"""|["'](fingerprints?)["']"""
    r"""|/report/|/fpb/"""
)
TOPIC_STRINGS = re.compile("|".join(re.escape(f'"{name.value}"') for name in TopicName))


def production_sources() -> list[Path]:
    return sorted(p for root in PRODUCTION for p in root.rglob("*.py") if ".venv" not in p.parts)


def offenders(pattern: re.Pattern[str], home: Path) -> list[str]:
    found = []
    for path in production_sources():
        if path == home:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_artifacts_keys_and_part_names_are_built_only_in_keys_module() -> None:
    assert offenders(KEY_SHAPES, KEYS_HOME) == []


def test_topic_names_are_spelled_only_in_events_module() -> None:
    assert offenders(TOPIC_STRINGS, TOPICS_HOME) == []


def test_every_topic_has_one_entry_and_stage_topics_pair_up() -> None:
    assert sorted(t.name for t in TOPICS) == sorted(TopicName)
    for topic in TOPICS:
        if topic.stage is not None:
            command = stage_topic(topic.stage, completion=False)
            completion = stage_topic(topic.stage, completion=True)
            assert command.name.endswith(".requested") and completion.name.endswith(".completed")
    assert {t.name for t in published_by(ServiceName.PUBLISHER)} >= {TopicName.PUBLISH_COMPLETED}
    assert TopicName.PUBLISH_COMPLETED not in {t.name for t in published_by(ServiceName.ORCHESTRATOR)}


def test_readme_event_table_lists_every_topic_with_its_producers_and_consumers() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for topic in TOPICS:
        if topic.name == TopicName.DEAD_LETTER:
            continue
        row = next((r for r in rows if f"`{topic.name.value}`" in r.split("|")[1]), None)
        assert row is not None, f"README's event table has no row for {topic.name.value}"
        route = row.split("|")[2]
        for service in (*topic.producers, *topic.consumers):
            word = "user" if service is ServiceName.USER else service.value
            stage_words = (
                {"stages", "any stage"} if service not in {ServiceName.USER, ServiceName.ORCHESTRATOR} else set()
            )
            assert word in route or any(w in route for w in stage_words), (topic.name.value, word, route)


def test_orchestrator_subscribes_to_what_the_registry_says() -> None:
    assert {t.name for t in consumed_by(ServiceName.ORCHESTRATOR)} == {
        TopicName.EXTRACTION_REQUESTED,
        TopicName.PREFLIGHT_COMPLETED,
        TopicName.EXTRACT_COMPLETED,
        TopicName.TRANSFORM_COMPLETED,
        TopicName.PUBLISH_COMPLETED,
        TopicName.STAGE_FAILED,
        TopicName.EXTRACTION_PROGRESS,
        TopicName.DEAD_LETTER,
        TopicName.EXTRACTION_COMPLETED,  # schedules and retention (pgmeta_orchestrator.schedules)
    }
