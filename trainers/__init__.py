"""Training: Trainer subclasses, collators, data helpers and the `run_<type>.py` scripts."""
