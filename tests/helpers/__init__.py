"""Shared test helpers: small models, fake data files, reference Hessians and a fake clock."""
