"""The stub supervisor's decisions against a stand-in server (no Triton): a lost stub of a READY model
is reloaded and reported down until it is back, a version an admin unloaded is left alone, more
stubs than expected (a replacement under way) are no loss, a failed reload backs off. With the real
server: tests/test_client.py kills a stub under load; tests/test_gateway_security.py shows /ready
following what the supervisor reports."""
from __future__ import annotations

import threading
import time

import pytest

from jina_triton_serving.supervisor import StubSupervisor

KEY = ("encoder_retrieval", "1")
WAIT = 120
A, B, C, D, E, F = range(9_000_001, 9_000_007)  # pids no process has (above Linux's pid_max): nothing is signalled


class Process:
    def poll(self):
        return None


class FakeServer:
    """Scripted stub tables, one per supervisor look; what it was asked to do is recorded."""

    def __init__(self, tables: list[dict], states: dict | None = None, failing_loads: int = 0):
        self.tables, self.states, self.failing_loads = list(tables), states or {}, failing_loads
        self.process, self.stop_requested, self.actions = Process(), False, []
        self.looks = 0
        self.done = threading.Event()

    def stub_pids(self):
        self.looks += 1
        if len(self.tables) > 1:
            return self.tables.pop(0)
        self.done.set()
        return self.tables[0]

    def repository_index(self):
        return {KEY: self.states.get(KEY, "READY")}

    def model_action(self, model, action):
        if action == "load" and self.failing_loads:
            self.failing_loads -= 1
            raise OSError("load failed")
        self.actions.append((model, action))


def _supervise(server: FakeServer) -> list:
    changes = []
    supervisor = StubSupervisor(server, interval=0.001, max_backoff=0.01, on_change=changes.append,
                                retire_idle_s=0.0)
    thread = supervisor.start()
    assert server.done.wait(WAIT)
    time.sleep(0.05)
    server.stop_requested = True
    thread.join(WAIT)
    return changes


def test_a_lost_stub_is_reloaded_and_reported_down_until_it_is_back():
    steady = {KEY: {A, B}}
    server = FakeServer([steady, steady, {KEY: {A}}, {KEY: {C, D}}, {KEY: {C, D}}])
    changes = _supervise(server)
    assert server.actions == [("encoder_retrieval", "unload"), ("encoder_retrieval", "load")]
    assert changes == [["encoder_retrieval"], []]


def test_a_version_that_is_not_ready_is_left_alone():
    server = FakeServer([{KEY: {A, B}}, {KEY: {A, B}}, {}, {}], states={KEY: "UNAVAILABLE"})
    changes = _supervise(server)
    assert server.actions == [] and changes in ([], [["encoder_retrieval"]], [["encoder_retrieval"], []])
    assert changes[-1:] != [["encoder_retrieval"]]  # not left reported down


def test_more_stubs_than_expected_is_a_replacement_not_a_loss():
    server = FakeServer([{KEY: {A, B}}, {KEY: {A, B}}, {KEY: {A, B, C, D}}, {KEY: {C, D}}])
    assert _supervise(server) == [] and server.actions == []


@pytest.mark.parametrize("failures", [1, 2])
def test_a_failed_reload_is_retried_with_backoff(failures):
    steady = {KEY: {A, B}}
    server = FakeServer([steady, steady, {KEY: {A}}] + [{KEY: {A}}] * 40 + [{KEY: {E, F}}], failing_loads=failures)
    _supervise(server)
    assert server.actions.count(("encoder_retrieval", "load")) == 1  # the reload that succeeded
    assert server.actions.count(("encoder_retrieval", "unload")) == failures + 1
