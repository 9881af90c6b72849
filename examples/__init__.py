"""Examples of hvdtrain components (see examples/custom_model.py and recipes/custom-model.yaml)."""
