"""Evaluation metrics: Fourier shell correlation and its summaries (CryoBench / cryoDRGN rules)."""
