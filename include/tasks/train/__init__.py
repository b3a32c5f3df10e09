"""Training: ingest, feedback, data versioning (DVC), validation, the fit, the gates, the model card
and registration, in the order of ``<pipeline>__train``."""
