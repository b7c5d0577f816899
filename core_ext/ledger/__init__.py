"""The points ledger over LMDB. `core.pyx` is the one compiled module; the files beside it are
included into it, one concern each (see core.pyx's docstring for the map)."""

from kassa.core_ext.ledger.core import DB_NAMES, MAX_DBS, Ledger, LedgerError, ident_key, ledger_error

__all__ = ["DB_NAMES", "MAX_DBS", "Ledger", "LedgerError", "ident_key", "ledger_error"]
