"""gpt-stats drivers: configuration, the command line, and the run that ties the tasks together."""
