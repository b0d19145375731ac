"""`pgmeta-capacity --replicas`: a replica's share is read from its own Prometheus exposition."""

from pgmeta_bench.replicas import delivered
from pgmeta_shared.events import TopicName

# As the services' Prometheus exporter writes it (seen on a transformer's /metrics).
SCOPE = 'otel_scope_name="pgmeta",otel_scope_schema_url="",otel_scope_version=""'
EXPOSITION = "\n".join(
    [
        "# TYPE pgmeta_deliveries_total counter",
        f'pgmeta_deliveries_total{{{SCOPE},outcome="SUCCESS",topic="transform.requested"}} 4.0',
        f'pgmeta_deliveries_total{{{SCOPE},outcome="RETRY",topic="transform.requested"}} 2.0',
        f'pgmeta_deliveries_total{{{SCOPE},outcome="SUCCESS",topic="extract.chunk_ready"}} 18.0',
        'pgmeta_records_total{kind="column",stage="transform"} 5000.0',
    ]
)


def test_only_successful_deliveries_of_the_topic_count() -> None:
    assert delivered(EXPOSITION, TopicName.TRANSFORM_REQUESTED) == 4
    assert delivered(EXPOSITION, TopicName.EXTRACT_CHUNK_READY) == 18
    assert delivered(EXPOSITION, TopicName.PUBLISH_REQUESTED) == 0
    assert delivered(EXPOSITION, None) == 0
