"""meshgate's benchmark: see bench/README.md."""
