"""An invoice after the close: numbering, issue, status changes, export, frozen identity."""
