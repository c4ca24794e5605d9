"""Write the README's results table from a report's JSON, its only source.

    python scripts/results_table.py docs/results/full.json            # print the table
    python scripts/results_table.py docs/results/full.json --readme README.md

With ``--readme``, the text between ``<!-- results:<budget>:begin -->`` and
``<!-- results:<budget>:end -->`` is replaced (the markers must be there already).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.app.report import results_markdown  # noqa: E402


def replace_block(text: str, budget: str, table: str) -> str:
    begin, end = f"<!-- results:{budget}:begin -->", f"<!-- results:{budget}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"the README has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}{end}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a report's JSON (distillray report --json)")
    ap.add_argument("--readme", help="fill this file's results block instead of printing")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    table = results_markdown(results)
    if not args.readme:
        print(table, end="")
        return 0
    path = Path(args.readme)
    path.write_text(replace_block(path.read_text(), results["budget"], table))
    print(f"{path}: results:{results['budget']} block written from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
