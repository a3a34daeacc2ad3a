"""Period-close billing: schedules and metered usage into consolidated invoices."""

__version__ = "0.1.0"
