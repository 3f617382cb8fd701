"""What an experiment is: one run's settings (``configs.Config``), the methods (``methods``)
and the tasks (``tasks``). Loads without jax: the command line reads it before anything
trains."""
