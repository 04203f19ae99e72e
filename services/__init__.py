"""tether.services: the control plane (CLI, training driver, and later REST/Redis/job submission)."""
