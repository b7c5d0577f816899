"""kassa.v1.Admin: the program's rules and the ledger's statistics."""

from __future__ import annotations

import grpc

from kassa.core_ext import Program, RulesError, load_program, parse_program
from kassa.core_ext.limits import SWEEP_ACCOUNTS_MAX
from kassa.core_ext.compaction import COMPACT_RECORDS_PER_STEP_MAX, COMPACT_RECORDS_PER_TXN_MAX
from kassa.core_ext.model import Code, CompactOp, CompactResult, Outcome, SetRulesOp, SweepOp
from kassa.v1 import admin_pb2, admin_pb2_grpc
from kassa.server import convert, errors
from kassa.server.servicers.respond import answer, commit_one

RELOADED_SOURCE_NAME = "ReloadRules.source_toml"  # the file name problems are reported under


def compile_rules(rule_paths, source_toml: str = ""):
    """Read (`source_toml`, or the files in `rule_paths`), validate and compile a program.
    Raises RulesError naming the file, the campaign and the field."""
    spec = parse_program({RELOADED_SOURCE_NAME: source_toml}) if source_toml else load_program(rule_paths)
    Program(spec)  # compiles, or refuses what validation let through
    return spec


async def switch_rules(ledger, committer, spec) -> Outcome:
    """Store `spec` as the ruleset every worker serves (the ledger keeps it in LMDB; the other
    workers pick it up by `refresh_program`), and switch this worker now."""
    (outcome,) = await committer.submit([SetRulesOp(tuple(spec.sources.items()), spec.version)])
    if outcome.code == Code.OK:
        ledger.refresh_program()
    return outcome


class SweepFailed(RuntimeError):
    """The expiry sweep stopped on a refused step: `outcome` says why (a full map, a drain, ...)."""

    def __init__(self, outcome):
        super().__init__(f"expiry sweep failed: {outcome.message}")
        self.outcome = outcome


async def sweep_expired(committer) -> tuple[int, int]:
    """Run the expiry sweep to the end, `SWEEP_ACCOUNTS_MAX` accounts per transaction.
    Returns (accounts settled, points expired)."""
    settled = expired = 0
    while True:
        (outcome,) = await committer.submit([SweepOp(SWEEP_ACCOUNTS_MAX)])
        if outcome.code != Code.OK:
            raise SweepFailed(outcome)
        settled += outcome.body.accounts_settled
        expired += outcome.body.expired_points
        if not outcome.body.more:
            return settled, expired


class CompactionFailed(RuntimeError):
    """A compaction step was refused: `outcome` says why (a full map, a drain, ...)."""

    def __init__(self, outcome):
        super().__init__(f"compaction failed: {outcome.message}")
        self.outcome = outcome


# How long one compaction step should hold the writer (the purchases queued behind it wait that
# long); a target: a step is sized by the last one's rate. Under load a pass gets one step per
# commit group. Steps of a fixed 1,000 records (6.4 ms median, bench.compaction_pass) beside groups
# of 1,000 purchases (about 50 ms) give compaction about 18,000 records a second, less than the
# 20,000-30,000 that 10,000 purchases a second leave to drop and forget: the soak's compaction fell
# behind (14 passes in 30 minutes at a 20 s interval). 20 ms a step gives it about 2x that.
COMPACT_STEP_MS_MAX = 20  # milliseconds
US_PER_MS = 1000


async def compact_ledger(committer, retention, step_ms_max: float = COMPACT_STEP_MS_MAX) -> CompactResult:
    """Run compaction to the end, one step per write transaction, each queued behind the purchases
    already waiting. The first step examines `COMPACT_RECORDS_PER_TXN_MAX` records; each next one
    as many as the last one's rate fits in `step_ms_max` (at most COMPACT_RECORDS_PER_STEP_MAX).
    The size travels in the operation, so a replica replays the same steps. Returns the steps' sums."""
    records_max = COMPACT_RECORDS_PER_TXN_MAX
    totals = [0, 0, 0, 0, 0, 0]
    while True:
        op = CompactOp(retention.replay_window_ms, retention.return_window_ms, records_max)
        (outcome,) = await committer.submit([op])
        if outcome.code != Code.OK:
            raise CompactionFailed(outcome)
        step = outcome.body
        for index, done in enumerate((step.answers_dropped, step.requests_forgotten, step.lots_removed,
                                      step.holds_removed, step.codes_removed, step.counters_removed)):
            totals[index] += done
        if not step.more:
            return CompactResult(*totals[:4], False, *totals[4:])
        records_max = next_step_records(records_max, step.step_us, step_ms_max)


def next_step_records(records_max: int, step_us: int, step_ms_max: float) -> int:
    """The records a step examines in `step_ms_max` at the rate the last step (`records_max` in
    `step_us`) showed; at most twice the last (one slow step cannot be followed by a huge one
    on a fast guess) and within [COMPACT_RECORDS_PER_TXN_MAX, COMPACT_RECORDS_PER_STEP_MAX]."""
    fitting = records_max * step_ms_max * US_PER_MS // max(step_us, 1)
    return int(min(max(fitting, COMPACT_RECORDS_PER_TXN_MAX), 2 * records_max, COMPACT_RECORDS_PER_STEP_MAX))


CODE_FRAMING_BYTES = 3  # a code in GeneratePromoCodesResponse: its tag and length, besides its text


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, ledger, committer, rule_paths, response_bytes_max: int):
        self._ledger = ledger
        self._committer = committer
        self._rule_paths = rule_paths
        self._response_bytes_max = response_bytes_max  # server.message_bytes_max: the most a response may be

    async def GetRules(self, request, context):
        program = self._ledger.program
        sources = "\n".join(f"# --- {name}\n{text}" for name, text in program.spec.sources.items())
        return admin_pb2.GetRulesResponse(
            ruleset_version=program.version,
            campaign_ids=[campaign.id for campaign in program.spec.campaigns],  # event campaigns too, in file order
            source_toml=sources,
        )

    async def ReloadRules(self, request, context):
        """Validate and compile the new program; only then switch every worker to it."""
        try:
            spec = compile_rules(self._rule_paths, request.source_toml)
        except RulesError as error:
            # The problems are in the request's source_toml, or (when it is empty) in the rule files.
            violations = [("source_toml", problem) for problem in error.problems] if request.source_toml else []
            await errors.refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                                f"ruleset refused, the old one keeps serving:\n{error}", errors.RULESET_REFUSED,
                                violations=violations)
        outcome = await switch_rules(self._ledger, self._committer, spec)
        return await answer(context, outcome, lambda _body: admin_pb2.ReloadRulesResponse(ruleset_version=spec.version))

    async def GeneratePromoCodes(self, request, context):
        # Refused before the codes are made: a response over the message limit could never be sent,
        # and its replay neither.
        response_bytes = request.count * (len(request.pattern.encode()) + CODE_FRAMING_BYTES)
        if response_bytes > self._response_bytes_max:
            await errors.refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"count: {request.count} codes of '{request.pattern}' make a response of about {response_bytes} "
                f"bytes, more than the server's message limit of {self._response_bytes_max} "
                "(server.message_bytes_max); ask for them in several requests",
                errors.RESPONSE_TOO_LARGE,
            )
        return await commit_one(
            self._committer, context, convert.generate_promo_codes_op, request, convert.promo_codes_response
        )

    async def ImportPromoCodes(self, request, context):
        return await commit_one(
            self._committer, context, convert.import_promo_codes_op, request, convert.promo_codes_response
        )

    async def ExpirePoints(self, request, context):
        try:
            settled, expired = await sweep_expired(self._committer)
        except SweepFailed as error:  # answered with the refused step's own code: a drain is not a full disk
            code = grpc.StatusCode[Code(error.outcome.code).name]
            await errors.refuse(context, code, str(error), errors.REASON_OF_CODE.get(code, errors.EXPIRY_SWEEP_FAILED))
        return admin_pb2.ExpirePointsResponse(accounts_settled=settled, expired_points=expired)

    async def GetStats(self, request, context):
        stats = self._ledger.stats()
        return admin_pb2.GetStatsResponse(
            accounts=stats["accounts"],
            transactions=stats["transactions"],
            ledger_bytes=stats["ledger_bytes"],
            ruleset_version=self._ledger.program.version,
        )
