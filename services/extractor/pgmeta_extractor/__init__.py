"""Extractor service: reads a PostgreSQL catalog with a few bulk pg_catalog queries."""
