#!/usr/bin/env python
"""Run a distillray search: the script users submit to a Ray cluster.

    python tune_mkd.py --preset smoke                 # tiny data, tiny random teacher (~3 min)
    python tune_mkd.py --preset demo                  # SST-2 + MiniLM teacher from local assets
    ray submit cluster.yaml tune_mkd.py -- --preset tang --tracking-uri http://HEAD:5000

It only parses arguments; ``orchestrator.search.search.run_search`` does the work. Joins the running
cluster when $RAY_ADDRESS is set (as under ``ray submit`` / ``ray job submit``), else starts a
local Ray with the dashboard on 127.0.0.1.
"""
import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
