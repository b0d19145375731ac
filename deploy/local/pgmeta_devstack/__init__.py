"""The local stack without Docker or root: Redis, Dapr control plane, a demo PostgreSQL, four services."""
