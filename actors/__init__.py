"""tether.actors: thin Ray shells around the plain role classes, placement, weight sync and the vLLM engine."""
