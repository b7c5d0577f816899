"""kassa.v1.Admin: the program's rules and the ledger's statistics."""

from __future__ import annotations

import grpc

from core_ext import Program, RulesError, load_program, parse_program
from core_ext.limits import SWEEP_ACCOUNTS_MAX
from core_ext.model import Code, SweepOp
from server.servicers.respond import unimplemented
from kassa.v1 import admin_pb2, admin_pb2_grpc

RELOADED_SOURCE_NAME = "ReloadRules.source_toml"  # the file name problems are reported under


async def sweep_expired(committer) -> tuple[int, int]:
    """Run the expiry sweep to the end, `SWEEP_ACCOUNTS_MAX` accounts per transaction.
    Returns (accounts settled, points expired)."""
    settled = expired = 0
    while True:
        (outcome,) = await committer.submit([SweepOp(SWEEP_ACCOUNTS_MAX)])
        if outcome.code != Code.OK:
            raise RuntimeError(f"expiry sweep failed: {outcome.message}")
        settled += outcome.body.accounts_settled
        expired += outcome.body.expired_points
        if not outcome.body.more:
            return settled, expired


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, ledger, committer, rule_paths):
        self._ledger = ledger
        self._committer = committer
        self._rule_paths = rule_paths

    async def GetRules(self, request, context):
        program = self._ledger.program
        sources = "\n".join(f"# --- {name}\n{text}" for name, text in program.spec.sources.items())
        return admin_pb2.GetRulesResponse(
            ruleset_version=program.version, campaign_ids=program.campaign_ids, source_toml=sources
        )

    async def ReloadRules(self, request, context):
        """Validate and compile the new program; switch only if both succeed."""
        try:
            if request.source_toml:
                spec = parse_program({RELOADED_SOURCE_NAME: request.source_toml})
            else:
                spec = load_program(self._rule_paths)
            program = Program(spec)
        except RulesError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ruleset refused, the old one keeps serving:\n{error}")
        self._ledger.program = program
        return admin_pb2.ReloadRulesResponse(ruleset_version=program.version)

    async def GeneratePromoCodes(self, request, context):
        return await unimplemented(context, "Admin.GeneratePromoCodes", "the rules engine issue")

    async def ExpirePoints(self, request, context):
        try:
            settled, expired = await sweep_expired(self._committer)
        except RuntimeError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return admin_pb2.ExpirePointsResponse(accounts_settled=settled, expired_points=expired)

    async def GetStats(self, request, context):
        stats = self._ledger.stats()
        return admin_pb2.GetStatsResponse(
            accounts=stats["accounts"],
            transactions=stats["transactions"],
            ledger_bytes=stats["ledger_bytes"],
            ruleset_version=self._ledger.program.version,
        )
