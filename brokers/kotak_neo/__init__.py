"""Kotak Neo: the SFeed ``native_batch`` market-data feed."""
