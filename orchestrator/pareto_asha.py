"""Old path of :mod:`orchestrator.search.pareto_asha`, kept for searches started before the move.

Tune pickles its scheduler and searcher into the search's ``tuner.pkl``, naming their classes by
module path; a search killed before the move and resumed after it (the same ``distillray tune``
command) unpickles ``orchestrator.pareto_asha.ParetoASHA`` / ``CohortLimiter``. Nothing in the
repository imports this module (tests/test_moved_modules.py)."""
from orchestrator.search.pareto_asha import CohortLimiter, ParetoASHA, RungDecision

__all__ = ["CohortLimiter", "ParetoASHA", "RungDecision"]
