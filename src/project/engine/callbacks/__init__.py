"""The callbacks the engine adds to every run: atomic checkpoint writes, RNG state, signals and SLURM requeue, the
non-finite loss check, the dashboard, the training flags (EMA/SWA, the finders, frozen features)."""
