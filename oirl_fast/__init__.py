"""oirl-fast: query-dependent prompt optimization from offline logs (Prompt-OIRL)."""
__version__ = "0.1.0"
