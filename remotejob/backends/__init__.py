"""Backends: pairs of an ObjectStore and a MessageQueue (see ``base``)."""
