"""Transformer service: raw catalog records to Atlas entities (Atlan's model)."""
