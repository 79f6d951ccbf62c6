"""gpt-stats tasks: the computations of each stage (corpus -> capture -> merge -> similarity -> baselines ->
report), written as plain functions and classes that the driver runs as Ray actors and tasks."""
