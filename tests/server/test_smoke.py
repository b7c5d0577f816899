from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kassa.v1 import accounts_pb2


def test_serving_health_and_reflection(kassa):
    health = health_pb2_grpc.HealthStub(kassa.channel())
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(kassa.channel())
    (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for service in reply.list_services_response.service}
    assert {"kassa.v1.Processing", "kassa.v1.Accounts", "kassa.v1.Admin"} <= names


def test_create_account(kassa):
    reply = kassa.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(request_id="a-1", account_id="A1"))
    assert reply.account.account_id == "A1"
