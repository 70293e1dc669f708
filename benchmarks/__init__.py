"""Scale benchmarks of the sync pipeline (see benchmarks/README.md)."""
