"""Where versions registered before restar/ had subpackages look for their pyfunc: each carries a copy of
its entry script, which imports `restar.pyfunc.RestarPyfunc`. Kept so that those versions still load
(and can be rolled back to); new versions import restar.model.pyfunc."""

from restar.model.pyfunc import RestarPyfunc

__all__ = ["RestarPyfunc"]
