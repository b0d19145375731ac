"""Orchestrator service: REST API, Dapr Workflow host, and the subscriptions that drive the workflow."""
