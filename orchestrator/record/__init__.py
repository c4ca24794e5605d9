"""What a run leaves in MLflow: a trained student's metrics, curve and artifacts (``outcome``),
and a search's best student found, downloaded and registered as a model (``registry``)."""
