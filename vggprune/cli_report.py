"""`vggprune report` / `vggprune compare` (issue #5): registered here once implemented."""


def register(sub) -> None:  # filled in by the reports work
    pass
