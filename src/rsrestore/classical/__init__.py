"""Training-free restorers: dark channel prior dehazing and classical sand-dust restoration."""
