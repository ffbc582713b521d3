"""carelab.diffusion."""
