"""Logging set-up for a service process."""

from __future__ import annotations

import logging


def configure_logging(service: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    # gRPC and httpx are chatty at INFO; their warnings still show.
    for noisy in ("httpx", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
