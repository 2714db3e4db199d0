"""Dispatch `python -m dsv3_edu.bench NAME [--json PATH] [options]` to dsv3_edu.bench.NAME.main(argv)."""

import importlib
import sys

NAMES = ("mla", "balance", "mtp", "ep")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks:", ", ".join(NAMES), "(or all)")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        for each in NAMES:
            print(f"== {each} ==")
            importlib.import_module(f"dsv3_edu.bench.{each}").main(rest)
        return 0
    if name not in NAMES:
        print(f"unknown benchmark {name!r}: choose one of {', '.join(NAMES)} or all", file=sys.stderr)
        return 2
    return importlib.import_module(f"dsv3_edu.bench.{name}").main(rest) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
