"""On-disk formats: orbax checkpoints of the train state (`train_state`: exact resume) and
Hugging Face model directories (`hf`: import and export)."""
