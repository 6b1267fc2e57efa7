"""Built-in datasets: heterogeneous phantoms defined in code (no downloads)."""
