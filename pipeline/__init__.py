"""The benchmark pipeline: thin stage modules that Snakemake runs, each calling the relief library."""
