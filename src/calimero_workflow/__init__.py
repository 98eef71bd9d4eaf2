"""calimero-workflow: run YAML test workflows against Calimero nodes."""

__version__ = "0.1.0"
