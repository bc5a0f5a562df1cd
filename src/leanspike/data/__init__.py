"""Datasets read from users' files, and the built-in ones that need no download."""
