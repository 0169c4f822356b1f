"""The science around the core: the paper's experiments and `reproduce` (experiments), known
densities and the one claim-1 check (densities), feature-space sample figures and their sanity
checks (features).  The core (model, training, sampling, checkpoints) never imports this package;
these modules use only the core's public API."""
