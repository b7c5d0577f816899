"""kassa.v1.Accounts: customers, cards, groups, balances and statements."""

from __future__ import annotations

from kassa.v1 import accounts_pb2, accounts_pb2_grpc
from kassa.server import convert
from kassa.server.servicers.respond import answer, commit_one, invalid


def _account_response(response_type):
    return lambda view: response_type(account=convert.account(view))


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(self, ledger, committer, clock):
        self._ledger = ledger
        self._committer = committer
        self._clock = clock

    async def CreateAccount(self, request, context):
        render = _account_response(accounts_pb2.CreateAccountResponse)
        return await commit_one(self._committer, context, convert.create_account_op, request, render)

    async def IssueCard(self, request, context):
        render = _account_response(accounts_pb2.IssueCardResponse)
        return await commit_one(self._committer, context, convert.issue_card_op, request, render)

    async def BlockCard(self, request, context):
        render = lambda result: accounts_pb2.BlockCardResponse(card=convert.card(result.card))  # noqa: E731
        return await commit_one(self._committer, context, convert.block_card_op, request, render)

    async def SetAttributes(self, request, context):
        render = _account_response(accounts_pb2.SetAttributesResponse)
        return await commit_one(self._committer, context, convert.set_attributes_op, request, render)

    async def Adjust(self, request, context):
        def render(result):
            return accounts_pb2.AdjustResponse(
                transaction_id=result.transaction_id, balance=convert.balance(result.balance), account_id=result.account_id
            )

        return await commit_one(self._committer, context, convert.adjust_op, request, render)

    async def JoinGroup(self, request, context):
        return await commit_one(self._committer, context, convert.join_group_op, request, convert.account)

    async def LeaveGroup(self, request, context):
        return await commit_one(self._committer, context, convert.leave_group_op, request, convert.account)

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
        outcome = self._ledger.statement(customer, convert.page_size(request.page_size), before_id)
        return await answer(context, outcome, convert.statement)
