"""Offline dataset builders (`mmrl build-data ...`): synthetic visual tasks, curriculum variants, and more."""
