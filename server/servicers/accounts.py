"""kassa.v1.Accounts: customers, cards, balances and statements."""

from __future__ import annotations

from core_ext.model import Code, Outcome
from server import convert
from server.servicers.respond import answer, invalid, unimplemented
from kassa.v1 import accounts_pb2, accounts_pb2_grpc


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(self, ledger, committer, clock):
        self._ledger = ledger
        self._committer = committer
        self._clock = clock

    async def CreateAccount(self, request, context):
        try:
            op = convert.create_account_op(request)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        (outcome,) = await self._committer.submit([op])
        return await answer(context, outcome, lambda view: accounts_pb2.CreateAccountResponse(account=convert.account(view)))

    async def IssueCard(self, request, context):
        try:
            op = convert.issue_card_op(request)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        (outcome,) = await self._committer.submit([op])
        return await answer(context, outcome, lambda view: accounts_pb2.IssueCardResponse(account=convert.account(view)))

    async def GetAccount(self, request, context):
        try:
            customer = convert.customer(request.customer)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        return await answer(context, self._ledger.account(customer, self._clock.now_ms()), convert.account)

    async def GetBalance(self, request, context):
        try:
            customer = convert.customer(request.customer)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        outcome = self._ledger.account(customer, self._clock.now_ms())
        return await answer(
            context,
            outcome,
            lambda view: accounts_pb2.GetBalanceResponse(account_id=view.account_id, balance=convert.balance(view.balance)),
        )

    async def ListTransactions(self, request, context):
        try:
            customer = convert.customer(request.customer)
            before_id = convert.page_token(request.page_token)
        except convert.InvalidArgument as error:
            return await invalid(context, error)
        outcome = self._ledger.statement(customer, request.page_size, before_id)
        return await answer(context, outcome, convert.statement)

    async def BlockCard(self, request, context):
        return await unimplemented(context, "Accounts.BlockCard", "the ledger depth issue")

    async def SetAttributes(self, request, context):
        return await unimplemented(context, "Accounts.SetAttributes", "the ledger depth issue")

    async def Adjust(self, request, context):
        return await unimplemented(context, "Accounts.Adjust", "the ledger depth issue")
