"""All that runs Inspect or reads its logs: tasks, datasets, scorers, the judge, sweeps and the report."""
