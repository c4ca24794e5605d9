"""Old path of :mod:`orchestrator.deploy.serving`, kept for MLflow models logged before the move.

``mlflow.pyfunc.log_model`` (``record/registry.py``) cloudpickles the ``StudentPyfunc`` instance,
and the pickle names its class by module path: a model registered before the move asks for
``orchestrator.serving.StudentPyfunc`` when it loads (``mlflow models serve``,
``mlflow.pyfunc.load_model``). Nothing in the repository imports this module
(tests/test_moved_modules.py loads such a model)."""
from orchestrator.deploy.serving import StudentPredictor, StudentPyfunc

__all__ = ["StudentPredictor", "StudentPyfunc"]
