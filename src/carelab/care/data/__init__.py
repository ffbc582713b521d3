"""CARE's data: the QAExample record, loaders for native files, offline synthesis and the fact table."""
