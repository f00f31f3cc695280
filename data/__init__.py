"""Data: generated scenes, shard writing, frame sampling, the streaming loader and collation."""
