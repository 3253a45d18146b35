"""patchsweep.pipeline: compute set-up, model sites, prompt datasets, capture and patch stages."""
