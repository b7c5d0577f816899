"""kassa's core: the loyalty program compiled into C, and the points ledger over LMDB.

Knows nothing of gRPC, protobuf or asyncio: plain values in (`core_ext.model`), plain values out.
"""

from core_ext.ledger import Ledger, LedgerError
from core_ext.program import ProgramSpec, RulesError, load_program, parse_program
from core_ext.rules import Program

__all__ = ["Ledger", "LedgerError", "Program", "ProgramSpec", "RulesError", "load_program", "parse_program"]
