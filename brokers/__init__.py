"""Broker adapters: one sub-package per venue behind the BaseBroker surface."""
