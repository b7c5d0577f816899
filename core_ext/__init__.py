"""kassa's core: the loyalty program compiled into C, and the points ledger over LMDB.

Knows nothing of gRPC, protobuf or asyncio: plain values in (`kassa.core_ext.model`), plain values out.
"""

from kassa.core_ext.ledger import Ledger, LedgerError
from kassa.core_ext.program import ProgramSpec, RulesError, load_program, parse_program
from kassa.core_ext.rules import Program

__all__ = ["Ledger", "LedgerError", "Program", "ProgramSpec", "RulesError", "load_program", "parse_program"]
