"""Datasets: scanning image folders with captions, and the built-in sample dataset."""
