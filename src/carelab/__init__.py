"""carelab: CARE, LoRA-Pro, code-watermark robustness and diffusion-vs-AR LMs as usable software."""

__version__ = "0.1.0"
