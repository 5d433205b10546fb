"""absl entry points: unlearn, and their ml_collections configs."""
