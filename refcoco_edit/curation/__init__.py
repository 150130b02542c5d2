"""Choosing what to edit and making the reference edits: source-object selection, then the build
that plans units, runs pipelines and writes candidates into the store."""
