"""Model builders: classic baselines and the Keras zoo."""
