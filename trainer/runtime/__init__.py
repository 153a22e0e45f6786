"""Where and how a run executes: tf.distribute strategies and the chief, device and host memory
budgets, the run directory's layout and its one-run-at-a-time lock."""
