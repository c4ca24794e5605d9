"""Runtime: what every layer above runs on. Ray start and resource checks (``ray_runtime``),
content keys and atomic writes (``keys``), named fault points (``faults``), progress lines
(``progress``), numeric precision per device (``precision``), MLflow helpers and tags
(``tracking``). Imports only ``orchestrator.config`` from the orchestrator."""
