"""Training a classifier: the phase loop, the frozen phase on cached embeddings or a closed-form
head, the memory plan and its OOM revisions, schedules, gradient accumulation, preemption, tuning
reports."""
