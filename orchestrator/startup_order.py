"""Old path of :mod:`orchestrator.search.startup_order`, kept for searches started before the move.

Tune pickles its searcher into the search's ``tuner.pkl``, naming its classes by module path; a
search killed before the move and resumed after it unpickles
``orchestrator.startup_order.CheapestFirst`` and its ``TrainingWork``. Nothing in the repository
imports this module (tests/test_moved_modules.py)."""
from orchestrator.search.startup_order import CheapestFirst, TrainingWork

__all__ = ["CheapestFirst", "TrainingWork"]
