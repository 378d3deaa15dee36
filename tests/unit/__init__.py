"""Pure policies and parameters."""
