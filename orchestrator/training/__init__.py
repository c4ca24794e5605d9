"""Training one student: the Ray TorchTrainer for it (``distill``), one worker's loop in named
steps (``worker``) and the parts it is made of (``train``: the student, batches, steps,
evaluation, saving and loading), the training bundle's on-disk format (``bundle``), local-mode
checkpoints (``trial_checkpoints``), MKD task mixtures (``mixture``), latency and parameter
counts (``probe``). Uses the teachers (on demand labels, a Transformer student initialised from
teacher layers); below the stages."""
