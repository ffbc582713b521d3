"""The SFT data pipeline: backends that reason, and the stages that keep, inject and tag (``pipeline``)."""
