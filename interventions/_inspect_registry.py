"""Inspect entry point (`[project.entry-points.inspect_ai]`): importing this registers the `steer` provider."""
