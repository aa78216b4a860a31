"""Flotilla agents.hpc_slurm."""
