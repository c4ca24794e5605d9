"""Training one student: the Ray Train loop per worker and ``make_trainer`` (``train``), the
training bundle's on-disk format (``bundle``), local-mode checkpoints (``trial_checkpoints``),
MKD task mixtures (``mixture``), latency and parameter counts (``probe``). Uses the teachers (on
demand labels, a Transformer student initialised from teacher layers); below the stages."""
