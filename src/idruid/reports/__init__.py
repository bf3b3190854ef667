"""Reports over several run folders: the paper's Tables 1-3, Figs. 5-6 and sample grids
(``idruid report``). Every table is made in ``tables`` and every figure drawn in ``figures``
(the single-evaluation ones ``idruid eval`` writes too); ``runs`` and ``probes`` read the folders."""

from ..errors import ReportError
from .build import write_report

__all__ = ["ReportError", "write_report"]
