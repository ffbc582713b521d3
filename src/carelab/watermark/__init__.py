"""carelab.watermark."""
