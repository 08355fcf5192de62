"""split-workbench: a JAX/Flax research workbench for the privacy of split learning."""
