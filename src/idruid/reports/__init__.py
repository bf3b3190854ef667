"""Reports over several run folders: the paper's Tables 1-3, Figs. 5-6 and sample grids
(``idruid report``). Drawing single images, grids and the ISR plot
(also what ``idruid eval`` writes) is figures."""

from ..errors import ReportError
from .build import write_report

__all__ = ["ReportError", "write_report"]
