"""Settings every service shares: where its Dapr sidecar is and which Dapr components to use."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DaprSettings(BaseSettings):
    """Read from ``PGMETA_*`` environment variables; component names are the same in every environment."""

    model_config = SettingsConfigDict(env_prefix="PGMETA_", extra="ignore")

    dapr_host: str = Field(default="127.0.0.1", description="Host of this service's Dapr sidecar.")
    dapr_grpc_port: int = Field(default=50001, description="gRPC port of this service's Dapr sidecar.")
    dapr_http_port: int = Field(default=3500, description="HTTP port of this service's Dapr sidecar.")
    pubsub_name: str = Field(default="pubsub", description="Dapr pub/sub component for all topics.")
    artifacts_store: str = Field(default="artifacts", description="State store for claim-check chunks and runs.")
    artifact_ttl_seconds: int = Field(default=7 * 24 * 3600, description="TTL of claim-check chunks.")
    log_level: str = Field(default="INFO", description="Python log level.")
    app_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("APP_API_TOKEN", "PGMETA_APP_API_TOKEN"),
        description="The token daprd sends (dapr-api-token) on its calls to this app; other callers are refused.",
    )
    dapr_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DAPR_API_TOKEN", "PGMETA_DAPR_API_TOKEN"),
        description="The token this app sends its sidecar (daprd refuses API calls without it).",
    )

    @property
    def dapr_grpc_address(self) -> str:
        return f"{self.dapr_host}:{self.dapr_grpc_port}"

    def sidecar_headers(self) -> dict[str, str]:
        """Headers of a plain HTTP call to a sidecar's API (the SDK adds the token by itself)."""
        return {"dapr-api-token": self.dapr_api_token.get_secret_value()} if self.dapr_api_token else {}
