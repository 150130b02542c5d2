"""Model weights by name: the resolver (flag > environment > config file > Hub id), the deterministic
tiny stand-ins with real architectures, and loading fixes for checkpoints as they are published."""
