"""Flask blueprints: the doors of the service."""
