"""Shipped presets (plugin sets and overrides) read by `united init --role`."""
