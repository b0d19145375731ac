"""Shared building blocks of pgmeta's services: event contracts, settings, Dapr adapters, Atlas naming."""
