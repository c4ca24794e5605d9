"""The search: Ray Tune with Optuna over student trials, one MLflow child run each (``search``),
early stopping on two objectives (``pareto_asha``) and the startup draws cheapest first
(``startup_order``)."""
