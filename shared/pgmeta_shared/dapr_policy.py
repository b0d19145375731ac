"""Dapr policies read off the topic registry: which app may publish and subscribe to which topic.

components/pubsub.yaml (and the chart's copy) carry these strings; a test checks they match ``TOPICS``.
"""

from __future__ import annotations

from pgmeta_shared.events import TOPICS, ServiceName, TopicName

APPS = (ServiceName.ORCHESTRATOR, ServiceName.EXTRACTOR, ServiceName.TRANSFORMER, ServiceName.PUBLISHER)


def _scopes(topics_of: dict[ServiceName, list[str]]) -> str:
    return ";".join(f"{app.value}={','.join(sorted(topics_of[app]))}" for app in APPS)


def publishing_scopes() -> str:
    """Each app publishes only what the registry says it produces (a user's request enters through the
    orchestrator's sidecar); a subscriber may also hand a message to the dead-letter topic."""
    topics_of: dict[ServiceName, list[str]] = {app: [] for app in APPS}
    for topic in TOPICS:
        for app in APPS:
            user_entry = ServiceName.USER in topic.producers and app is ServiceName.ORCHESTRATOR
            if app in topic.producers or user_entry:
                topics_of[app].append(topic.name.value)
    for app in APPS:
        if any(app in topic.consumers for topic in TOPICS):
            topics_of[app].append(TopicName.DEAD_LETTER.value)
    return _scopes(topics_of)


def subscription_scopes() -> str:
    topics_of: dict[ServiceName, list[str]] = {app: [] for app in APPS}
    for topic in TOPICS:
        for app in APPS:
            if app in topic.consumers:
                topics_of[app].append(topic.name.value)
    return _scopes(topics_of)
