"""Teachers: the teacher model and its files (``teacher_model``), word vectors from its input
embeddings (``teacher_vectors``), the pool of Ray actors that label texts (``teacher_pool``,
``batching``), the soft-label cache (``cache``) and labels fetched as a student reaches its rows
(``on_demand_labels``). Below training and the stages; above runtime and config."""
