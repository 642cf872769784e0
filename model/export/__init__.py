"""Writing a trained AFM as a versioned SavedModel (``model.contracts.export_format``)."""
