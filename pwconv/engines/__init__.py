"""Engines run a :class:`~pwconv.core.conv.ConvPlan` from a source to a sink."""
