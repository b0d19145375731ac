"""Publisher service: writes Atlas entities to object storage as JSON Lines plus a manifest."""
