"""Atlas entities to an Atlan tenant through pyatlan: bulk upserts and archives in small batches, retried politely.

No Atlan tenant is reachable from the build machines, so tests/integration/test_atlan_sink.py runs this module
against a local stand-in server that records and checks the HTTP requests pyatlan sends.

HTTP endpoints (pyatlan 11.6, under ``<base_url>/api/meta/``):

- upsert: ``POST entity/bulk/?replaceTags=false&appendTags=false&replaceBusinessAttributes=false&
  overwriteBusinessAttributes=false`` (``client.asset.save``), one per batch; when a batch creates a Connection,
  pyatlan then reads it back with ``GET entity/guid/<guid>``, again while that answers 403 (its own wait for the
  connection's policies: up to 10 reads, 1 to 8 s apart).
- archive: ``GET entity/uniqueAttribute/type/<typeName>?attr:qualifiedName=<qn>`` per reference to find its GUID,
  then ``client.asset.delete_by_guid``: ``GET entity/guid/<guid>`` per GUID (pyatlan checks each type can be
  archived), one ``DELETE entity/bulk/?deleteType=SOFT&guid=<guid>&…``, and ``GET entity/guid/<guid>`` per
  archived asset (pyatlan confirms the DELETED status). pyatlan offers no archive by qualifiedName itself.

Retries happen in exactly one place: pyatlan's own HTTP transport (httpx with an ``httpx_retries.Retry``), which
pgmeta configures instead of pyatlan's default (5 retries on 302/403/429/5xx, real ``time.sleep``). Every request
pyatlan makes, its internal read-backs included, is retried on 429 and 5xx (and on connection errors and
timeouts) up to ``max_retries`` times, waiting ``Retry-After`` seconds when the server sends it, otherwise 1, 2,
4, … s with jitter, never more than ``max_backoff_seconds``; any other 4xx is final. When a request's retries
are spent, its batch ends there: pyatlan's own loops above the transport (delete_by_guid's read-back, up to 20
times 1 s apart) never see the failure to try again, so one request is sent at most ``max_retries + 1`` times.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from more_itertools import chunked
from opentelemetry.trace import SpanKind
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgmeta_shared.errors import CredentialsNotFoundError, PgmetaError
from pgmeta_shared.telemetry import mark_failed, pipeline_metrics, tracer

if TYPE_CHECKING:
    import httpx

    from pgmeta_shared.platform import Platform

log = logging.getLogger(__name__)

T = TypeVar("T")

SECRET_STORE = "secretstore"
API_KEY_FIELD = "api_key"
# Atlan's rate limiter answers 429; 5xx are its gateways and Atlas itself. Other 4xx will not get better.
RETRYABLE_STATUSES = frozenset({429, *range(500, 600)})
# POST too: a bulk upsert matches entities by qualifiedName, so sending it twice changes nothing more.
RETRYABLE_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE")
FIRST_BACKOFF_SECONDS = 1.0
REDACTED = "***"

Entity = dict[str, Any]
Reference = tuple[str, str]


class AtlanSettings(BaseSettings):
    """Read from ``PGMETA_ATLAN_*`` environment variables; the tenant URL also from Atlan's own ``ATLAN_BASE_URL``."""

    model_config = SettingsConfigDict(env_prefix="PGMETA_ATLAN_", extra="ignore", populate_by_name=True)

    base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ATLAN_BASE_URL", "PGMETA_ATLAN_BASE_URL"),
        description="Atlan tenant URL, e.g. https://tenant.atlan.com; unset, nothing is sent to Atlan.",
    )
    api_key_secret: str = Field(
        default="atlan-api-key",
        description=f"Entry of the Dapr secret store {SECRET_STORE!r} holding the API key under {API_KEY_FIELD!r}.",
    )
    batch_size: int = Field(
        default=20, ge=1, description="Entities per bulk request (Atlan recommends small batches of about 20)."
    )
    max_retries: int = Field(
        default=5, ge=0, description="Retries of one HTTP request after a 429, a 5xx or a connection error."
    )
    max_backoff_seconds: float = Field(
        default=60, gt=0, description="Longest wait before a retry, also for a longer Retry-After from the server."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)


class AtlanConfigurationError(PgmetaError):
    code = "atlan_misconfigured"


def read_api_key(platform: Platform, settings: AtlanSettings) -> str:
    """The Atlan API key from the Dapr secret store; only ever handed to ``AtlanSink``, never logged."""
    api_key = platform.get_secret(SECRET_STORE, settings.api_key_secret).get(API_KEY_FIELD, "")
    if not api_key.strip():
        raise CredentialsNotFoundError(
            f"secret {settings.api_key_secret!r} in {SECRET_STORE!r} has no {API_KEY_FIELD!r}",
            hint="store the Atlan API key there, or unset ATLAN_BASE_URL to publish to object storage only",
        )
    return api_key


@dataclass(frozen=True)
class BatchResult:
    """One bulk request's outcome, as Atlan reported it, for the run report."""

    operation: str
    index: int
    entities: int
    created: int = 0
    updated: int = 0
    archived: int = 0
    skipped: int = 0  # archive only: not in Atlan, or archived already
    failed: int = 0
    attempts: int = 0
    waited_seconds: float = 0.0
    http_status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_report(self) -> dict[str, Any]:
        return asdict(self)


def backoff_seconds(retry_number: int, retry_after: float | None, cap: float) -> float:
    """The wait before retry ``retry_number`` (1-based): the server's Retry-After, else 1, 2, 4, … s less up to half
    as jitter (replicas that failed together do not retry together); never longer than ``cap``."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    exponential = FIRST_BACKOFF_SECONDS * 2.0 ** (retry_number - 1)
    return min(exponential * random.uniform(0.5, 1.0), cap)


class _RetriesExhausted(Exception):
    """A request still failed after its last retry; raised through pyatlan, which then retries nothing itself."""


@dataclass
class _Exchange:
    """What the HTTP layer saw while one batch ran: every attempt, the waits, the last request and answer."""

    attempts: int = 0
    waits: list[float] = field(default_factory=list)
    request: str = ""
    request_attempts: int = 0
    status: int | None = None

    def describe(self) -> str:
        answer = f"HTTP {self.status}" if self.status is not None else "no answer"
        attempts = f"{self.request_attempts} attempt{'s' if self.request_attempts != 1 else ''}"
        return f"{answer} from {self.request} after {attempts}" if self.request else answer


class AtlanSink:
    """Sends Atlas entity dicts to one Atlan tenant; one batch at a time, so use one sink per thread."""

    def __init__(self, settings: AtlanSettings, api_key: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not settings.base_url:
            raise AtlanConfigurationError("no Atlan tenant configured", hint="set ATLAN_BASE_URL")
        if not api_key.strip():
            raise AtlanConfigurationError("the Atlan API key is empty", hint=f"check {settings.api_key_secret!r}")
        self._settings = settings
        self._api_key = api_key
        self._sleep = sleep
        self._exchange = _Exchange()
        # pyatlan costs ~140 MB and 4.5 s to import: only a publisher with a tenant configured pays for it.
        from pyatlan.client.atlan import AtlanClient

        try:
            self._client = AtlanClient(  # type: ignore[no-untyped-call]
                base_url=settings.base_url, api_key=api_key, retry=self._retry_policy()
            )
        except Exception as exc:  # pyatlan validates with pydantic v1; keep its message, never the key
            raise AtlanConfigurationError(f"cannot build the Atlan client: {self._redact(str(exc))}") from None
        # pyatlan keeps its httpx client private; its event hooks are httpx's public way to watch every request.
        self._http: httpx.Client = self._client._session
        self._http.event_hooks["request"].append(self._on_request)
        self._http.event_hooks["response"].append(self._on_response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AtlanSink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def upsert(self, entities: Iterable[Entity]) -> list[BatchResult]:
        """Create or update entities (matched by typeName and qualifiedName) in bulk requests of ``batch_size``."""
        return [
            self._observed("upsert", self._upsert_batch, index, batch)
            for index, batch in enumerate(chunked(entities, self._batch_size))
        ]

    def archive(self, references: Iterable[Reference]) -> list[BatchResult]:
        """Soft-delete (archive) the assets named by (typeName, qualifiedName), ``batch_size`` per DELETE request."""
        return [
            self._observed("archive", self._archive_batch, index, batch)
            for index, batch in enumerate(chunked(references, self._batch_size))
        ]

    def _observed(
        self, operation: str, send: Callable[[int, list[T]], BatchResult], index: int, batch: list[T]
    ) -> BatchResult:
        """One batch inside a CLIENT span (entities, outcome, HTTP attempts), counted by operation and outcome."""
        with tracer().start_as_current_span(
            f"atlan {operation} batch", kind=SpanKind.CLIENT, attributes={"pgmeta.batch": index}
        ) as span:
            result = send(index, batch)
            span.set_attributes(
                {
                    "pgmeta.entities": result.entities,
                    "pgmeta.created": result.created,
                    "pgmeta.updated": result.updated,
                    "pgmeta.archived": result.archived,
                    "pgmeta.failed": result.failed,
                    "pgmeta.http_attempts": result.attempts,
                }
            )
            if result.error is not None:
                mark_failed(span, result.error[:300])
        outcome = "ok" if result.ok else "failed"
        pipeline_metrics().atlan_batches.add(1, {"operation": operation, "outcome": outcome})
        return result

    @property
    def _batch_size(self) -> int:
        return self._settings.batch_size

    def _upsert_batch(self, index: int, batch: list[Entity]) -> BatchResult:
        from pyatlan.model.assets import Asset

        self._exchange = _Exchange()
        try:
            assets = [Asset._convert_to_real_type_(entity) for entity in batch]  # type: ignore[no-untyped-call]
            response = self._client.asset.save(assets)
        except Exception as exc:  # one failed batch must not stop the others; pyatlan raises more than AtlanError
            return self._failed("upsert", index, len(batch), exc)
        mutated = response.mutated_entities
        result = BatchResult(
            operation="upsert",
            index=index,
            entities=len(batch),
            created=len(mutated.CREATE or []) if mutated else 0,
            updated=len(mutated.UPDATE or []) if mutated else 0,
            **self._exchange_facts(),
        )
        log.info(
            "atlan upsert batch %d: %d entities, %d created, %d updated, %d HTTP attempts",
            index,
            result.entities,
            result.created,
            result.updated,
            result.attempts,
        )
        return result

    def _archive_batch(self, index: int, batch: list[Reference]) -> BatchResult:
        from pyatlan.model.assets import Asset

        self._exchange = _Exchange()
        try:
            guids = self._archivable_guids(batch)
            archived = len(self._client.asset.delete_by_guid(guids).assets_deleted(Asset)) if guids else 0
        except Exception as exc:  # one failed batch must not stop the others; pyatlan raises more than AtlanError
            return self._failed("archive", index, len(batch), exc)
        result = BatchResult(
            operation="archive",
            index=index,
            entities=len(batch),
            archived=archived,
            skipped=len(batch) - len(guids),
            **self._exchange_facts(),
        )
        log.info(
            "atlan archive batch %d: %d references, %d archived, %d skipped, %d HTTP attempts",
            index,
            result.entities,
            result.archived,
            result.skipped,
            result.attempts,
        )
        return result

    def _archivable_guids(self, batch: list[Reference]) -> list[str]:
        """GUIDs of the referenced assets that are in Atlan and still active, each once."""
        from pyatlan.errors import AtlanError
        from pyatlan.model.enums import EntityStatus

        asset_types = {type_name: _asset_type(type_name) for type_name, _ in batch}
        guids: dict[str, None] = {}
        for type_name, qualified_name in batch:
            try:
                asset = self._client.asset.get_by_qualified_name(
                    qualified_name=qualified_name,
                    asset_type=asset_types[type_name],
                    min_ext_info=True,
                    ignore_relationships=True,
                )
            except AtlanError as exc:
                if exc.error_code.http_error_code == 404:
                    continue
                raise
            if asset.status != EntityStatus.DELETED:
                guids[asset.guid] = None
        return list(guids)

    def _failed(self, operation: str, index: int, entities: int, exc: Exception) -> BatchResult:
        import httpx
        from pyatlan.errors import AtlanError

        reason = self._redact(str(exc)) or type(exc).__name__
        if isinstance(exc, _RetriesExhausted):
            error = reason
        elif isinstance(exc, AtlanError) and (self._exchange.status or 0) >= 400:
            error = f"{self._exchange.describe()}: {reason}"
        elif isinstance(exc, httpx.HTTPError):
            error = f"{self._exchange.describe()}: {type(exc).__name__}: {reason}"
        else:
            error = f"{type(exc).__name__}: {reason}"
        log.warning("atlan %s batch %d failed: %s", operation, index, error)
        return BatchResult(
            operation=operation, index=index, entities=entities, failed=entities, error=error, **self._exchange_facts()
        )

    def _exchange_facts(self) -> dict[str, Any]:
        exchange = self._exchange
        return {
            "attempts": exchange.attempts,
            "waited_seconds": round(sum(exchange.waits, 0.0), 3),
            "http_status": exchange.status,
        }

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, REDACTED)

    def _on_request(self, request: httpx.Request) -> None:
        exchange = self._exchange
        exchange.attempts += 1
        exchange.request = f"{request.method} {request.url.path}"
        exchange.request_attempts = 1
        exchange.status = None

    def _on_response(self, response: httpx.Response) -> None:
        """Sees the transport's final answer to each request: still 429 or 5xx means the retries are spent.

        Raising here, before pyatlan reads the answer, ends the batch: pyatlan would turn it into an AtlanError
        (or, for 503, into None) and its own loops above the transport would try again, e.g. delete_by_guid's
        read-back, 20 times 1 s apart, each time with all of this policy's retries.
        """
        self._exchange.status = response.status_code
        if response.status_code in RETRYABLE_STATUSES:
            detail = " ".join(response.read().decode(errors="replace").split())[:300]
            raise _RetriesExhausted(self._redact(f"{self._exchange.describe()}: {detail}".removesuffix(": ")))

    def _on_retry(self, answer: httpx.Response | Exception, wait: float) -> None:
        exchange = self._exchange
        exchange.attempts += 1
        exchange.request_attempts += 1
        exchange.waits.append(wait)
        exchange.status = getattr(answer, "status_code", None)
        pipeline_metrics().atlan_retries.add(1)
        log.info("atlan: %s answered %s, retry in %.1f s", exchange.request, _answer(answer), wait)
        self._sleep(wait)

    def _retry_policy(self) -> Any:
        """pyatlan's transport retry, paced by pgmeta: which answers to retry, how long to wait, through ``sleep``."""
        from httpx_retries import Retry

        settings = self._settings
        on_retry = self._on_retry

        # pyatlan's transport calls ``increment()`` and then ``sleep(answer)`` before every retry; ``increment``
        # copies through ``type(self)``, so the copies keep this class and, through the closure, this sink.
        class PacedRetry(Retry):
            def sleep(self, response: httpx.Response | Exception) -> None:
                wait = backoff_seconds(self.attempts_made, self._retry_after(response), settings.max_backoff_seconds)
                on_retry(response, wait)
                self.elapsed_sleep += wait

            def _retry_after(self, answer: httpx.Response | Exception) -> float | None:
                value = getattr(answer, "headers", {}).get("Retry-After", "").strip()
                try:
                    return self.parse_retry_after(value) if value else None
                except ValueError:
                    return None

        return PacedRetry(
            total=settings.max_retries,
            allowed_methods=RETRYABLE_METHODS,
            status_forcelist=RETRYABLE_STATUSES,
            max_backoff_wait=settings.max_backoff_seconds,
        )


def _asset_type(type_name: str) -> type[Any]:
    import pyatlan.model.assets as assets

    asset_type = getattr(assets, type_name, None)
    if isinstance(asset_type, type) and issubclass(asset_type, assets.Asset):
        return asset_type
    raise ValueError(f"{type_name!r} is not an Atlan asset type")


def _answer(answer: httpx.Response | Exception) -> str:
    status = getattr(answer, "status_code", None)
    return f"HTTP {status}" if status is not None else type(answer).__name__
