"""Benchmarks: `python -m dsv3_edu.bench {mla,balance,mtp,all} [--json PATH]`. Each prints a table; --json writes results."""
