"""`vggprune train` / `vggprune evaluate` (issue #3): registered here once implemented."""


def register(sub) -> None:  # filled in by the data/training work
    pass
