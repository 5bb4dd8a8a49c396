"""Pure-functional Flax (linen) models: no training loop, no file formats but checkpoint conversion."""
