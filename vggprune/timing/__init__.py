"""Timing: the timed callable and paired rounds, evidence sizing, the allocator regime, the quiet-machine
watch, timing workers, and the part-by-part breakdown."""
