"""Broker -> aggregator -> spool -> store: the threads, the writer's durability policy, the tick journal, health."""
