"""Serving: one question over a document (``ask``) and the OpenAI-compatible server (``server``)."""
