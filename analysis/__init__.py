"""patchsweep.analysis: recovery statistics across prompts, FDR correction, figures, report."""
