"""The durable side: the SQL store, the reconciler, restores, adjustments and alerts."""
