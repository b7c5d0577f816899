"""Caller is a value of its own module (server/caller.py), used by the servicers and the auth interceptor."""

from kassa.server.caller import ANONYMOUS, CALLER, Caller


class TestStoreRefusal:
    def test_a_key_for_every_store_may_act_anywhere(self):
        assert Caller("pos-1", frozenset(), False).store_refusal("s1") is None

    def test_a_scoped_key_may_act_for_its_store(self):
        assert Caller("pos-1", frozenset({"s1"}), False).store_refusal("s1") is None

    def test_a_scoped_key_is_refused_another_store(self):
        refusal = Caller("pos-1", frozenset({"s1"}), False).store_refusal("s2")
        assert refusal == "store_id: 'pos-1' may not act for store 's2'"

    def test_a_scoped_key_must_name_the_store(self):
        refusal = Caller("pos-1", frozenset({"s1"}), False).store_refusal("")
        assert refusal == "store_id: required for 'pos-1', whose key is scoped to stores"


class TestDefaultCaller:
    def test_without_auth_the_caller_is_anonymous(self):
        assert CALLER.get() is ANONYMOUS

    def test_the_anonymous_caller_is_admin_for_every_store(self):
        assert ANONYMOUS.admin
        assert ANONYMOUS.stores == frozenset()


class TestModuleBoundary:
    def test_the_interceptor_module_uses_the_callers_module_value(self):
        from kassa.server.interceptors import auth

        assert auth.Caller is Caller
