"""Every state change of training data (docs/architecture.md, "Actions"): atomic, audited last."""
