"""The exercise tests; they grade whatever implementation SCRATCH_LM_EXERCISE_IMPL names."""
