"""tether.learner: pure PyTorch/maths. Never imports ray, fastapi or redis (checked by tests/unit/test_layering.py)."""
