"""Models stage: four experts and the meta-controller per walk-forward fold (schema `models`)."""
