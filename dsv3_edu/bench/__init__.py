"""Benchmarks: `python -m dsv3_edu.bench {mla,balance,mtp,all} [--json PATH]`.

Each prints a table of medians and ratios measured in one run; --json writes them.
"""
