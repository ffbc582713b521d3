"""carelab.lora."""
