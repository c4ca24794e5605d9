"""The pipeline's stages before a student trains: load the data, fine-tune or refine the teacher
(``teacher``, ``multitask_teacher``), augment (``augment_stage``), label and encode into a
training bundle (``pipeline``), and the checks of every input before any work (``preflight``)."""
