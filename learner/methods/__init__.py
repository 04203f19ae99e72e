"""The maths of each method: pure functions and small state machines, tested against hand-computed numbers."""
