"""switchyard benchmarks: `python -m bench.run` (what `make bench` calls) measures a local mesh end to end."""
