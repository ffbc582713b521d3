"""carelab.care: native retrieval-augmented reasoning (CARE)."""
