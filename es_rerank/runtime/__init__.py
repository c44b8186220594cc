"""Query-time model runtimes: ground-floor code that needs neither torch nor transformers."""
