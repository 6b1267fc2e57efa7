"""Analysis of trained runs: latent landscapes and particle selection."""
