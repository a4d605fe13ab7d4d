#!/usr/bin/python3
"""The history checker must catch what it exists to catch: each test builds a small history and a
final state by hand and expects the checker to accept or to name the violation.

Usage: checker_test.py BUILD_DIR
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.abspath(sys.argv[1]), "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
del sys.argv[1]

import harness  # noqa: E402
from harness import COUNTER, REGISTER, SET_ADD, SET_REMOVE  # noqa: E402
from mergedb.v1 import crdt_pb2  # noqa: E402


def op(kind, node, doc, arg, invoked, acked=None, concern="LOCAL"):
    o = harness.Op(kind, node, doc, arg, concern)
    o.invoked, o.acked = invoked, acked
    return o


def history(*ops, wipes=()):
    h = harness.History()
    for o in ops:
        h.add(o)
    for wipe in wipes:
        node, t = wipe[0], wipe[1]
        h.wiped(node, at=t, covered=wipe[2] if len(wipe) > 2 else None)
        if len(wipe) > 3:
            h.wipe_restarts[node][-1] = wipe[3]
    return h


def counter(value):
    return {"n": crdt_pb2.TypedValue(counter=value)}


def tags(*elements):
    v = crdt_pb2.TypedValue()
    for e in elements:
        v.set.elements.add().string_value = e
    return {"tags": v}


def register(*values):
    v = crdt_pb2.TypedValue()
    if len(values) == 1:
        v.register.winner.scalar.string_value = values[0]
    else:
        for value in values:
            v.register.siblings.add().value.scalar.string_value = value
    return {"v": v}


class CounterChecks(unittest.TestCase):
    def test_between_acknowledged_and_attempted_passes(self):
        h = history(op(COUNTER, "n1", "c", 2, 1, 2), op(COUNTER, "n2", "c", 3, 1, None))
        self.assertEqual(harness.check_history(h, {"c": counter(2)}), [])
        self.assertEqual(harness.check_history(h, {"c": counter(5)}), [])

    def test_lost_increment_is_caught(self):
        h = history(op(COUNTER, "n1", "c", 2, 1, 2), op(COUNTER, "n2", "c", 3, 1, 2))
        self.assertIn("outside", harness.check_history(h, {"c": counter(3)})[0])

    def test_more_than_attempted_is_caught(self):
        h = history(op(COUNTER, "n1", "c", 2, 1, 2))
        self.assertIn("outside", harness.check_history(h, {"c": counter(4)})[0])

    def test_local_ack_on_a_node_wiped_later_may_be_lost(self):
        h = history(op(COUNTER, "n1", "c", 2, 1, 2), wipes=[("n1", 3)])
        self.assertEqual(harness.check_history(h, {"c": counter(0)}), [])
        h = history(op(COUNTER, "n1", "c", 2, 1, 2, "QUORUM"), wipes=[("n1", 3)])
        self.assertNotEqual(harness.check_history(h, {"c": counter(0)}), [])

    def test_local_ack_a_peer_held_before_the_wipe_must_survive_it(self):
        # Acknowledged at 2; at 2.5 a peer held everything n1 had acknowledged; wiped at 3.
        h = history(op(COUNTER, "n1", "c", 2, 1, 2), wipes=[("n1", 3, 2.5)])
        self.assertIn("outside", harness.check_history(h, {"c": counter(0)})[0])
        # Acknowledged after that moment: it may have died with the data dir.
        h = history(op(COUNTER, "n1", "c", 2, 1, 2.7), wipes=[("n1", 3, 2.5)])
        self.assertEqual(harness.check_history(h, {"c": counter(0)}), [])

    def test_local_ack_after_the_wiped_node_came_back_must_survive(self):
        # Invoked before the kill at 3, retried and acknowledged by the restarted node at 5.
        h = history(op(COUNTER, "n1", "c", 2, 2.9, 5), wipes=[("n1", 3, None, 4)])
        self.assertIn("outside", harness.check_history(h, {"c": counter(0)})[0])
        # An answer taken just after the kill (sent just before it) may be lost.
        h = history(op(COUNTER, "n1", "c", 2, 2.9, 3.01), wipes=[("n1", 3, None, 4)])
        self.assertEqual(harness.check_history(h, {"c": counter(0)}), [])


class SetChecks(unittest.TestCase):
    def test_acknowledged_add_must_be_present(self):
        h = history(op(SET_ADD, "n1", "s", "a", 1, 2))
        self.assertEqual(harness.check_history(h, {"s": tags("a")}), [])
        self.assertIn("lost", harness.check_history(h, {"s": tags()})[0])

    def test_a_later_remove_may_take_it(self):
        h = history(op(SET_ADD, "n1", "s", "a", 1, 2), op(SET_REMOVE, "n2", "s", "a", 3, None))
        self.assertEqual(harness.check_history(h, {"s": tags()}), [])

    def test_an_earlier_remove_cannot_have_observed_it(self):
        h = history(op(SET_REMOVE, "n2", "s", "a", 1, 5), op(SET_ADD, "n1", "s", "a", 2, 3))
        self.assertIn("lost", harness.check_history(h, {"s": tags()})[0])

    def test_a_remove_that_observed_the_add_must_have_taken_it(self):
        # n1 acknowledged the add at 2, then the remove (invoked at 3): the element is gone.
        h = history(op(SET_ADD, "n1", "s", "a", 1, 2), op(SET_REMOVE, "n1", "s", "a", 3, 4))
        self.assertEqual(harness.check_history(h, {"s": tags()}), [])
        self.assertIn("remove", harness.check_history(h, {"s": tags("a")})[0])
        # The remove on another node may not have seen the add yet.
        h = history(op(SET_ADD, "n1", "s", "a", 1, 2), op(SET_REMOVE, "n2", "s", "a", 3, 4))
        self.assertEqual(harness.check_history(h, {"s": tags("a")}), [])
        # Nor may it after n1 lost its data between the add and the remove.
        h = history(op(SET_ADD, "n1", "s", "a", 1, 2), op(SET_REMOVE, "n1", "s", "a", 3, 4),
                    wipes=[("n1", 2.5)])
        self.assertEqual(harness.check_history(h, {"s": tags("a")}), [])

    def test_element_never_added_is_caught(self):
        h = history(op(SET_ADD, "n1", "s", "a", 1, 2))
        self.assertIn("never added", harness.check_history(h, {"s": tags("a", "b")})[0])


class RegisterChecks(unittest.TestCase):
    def test_later_write_supersedes(self):
        h = history(op(REGISTER, "n1", "r", "x", 1, 2), op(REGISTER, "n2", "r", "y", 3, None))
        self.assertEqual(harness.check_history(h, {"r": register("y")}), [])

    def test_lost_write_without_successor_is_caught(self):
        h = history(op(REGISTER, "n1", "r", "x", 3, 4), op(REGISTER, "n2", "r", "y", 1, 2))
        self.assertIn("lost", harness.check_history(h, {"r": register("y")})[0])

    def test_a_later_write_that_did_not_survive_excuses_nothing(self):
        # x acknowledged; y invoked later but lost itself (it failed); only z, written before x,
        # survives: x was lost with no successor.
        h = history(op(REGISTER, "n2", "r", "z", 0, 0.5), op(REGISTER, "n1", "r", "x", 1, 2),
                    op(REGISTER, "n3", "r", "y", 3, None))
        self.assertIn("lost", harness.check_history(h, {"r": register("z")})[0])

    def test_unwritten_value_is_caught(self):
        h = history(op(REGISTER, "n1", "r", "x", 1, 2))
        problems = harness.check_history(h, {"r": register("z")})
        self.assertTrue(any("never written" in p for p in problems))

    def test_causally_ordered_siblings_are_caught(self):
        h = history(op(REGISTER, "n1", "r", "x", 1, 2), op(REGISTER, "n1", "r", "y", 3, 4))
        problems = harness.check_history(h, {"r": register("x", "y")})
        self.assertTrue(any("siblings" in p for p in problems))
        # Concurrent writes on two nodes are legitimate siblings.
        h = history(op(REGISTER, "n1", "r", "x", 1, 2), op(REGISTER, "n2", "r", "y", 3, 4))
        self.assertEqual(harness.check_history(h, {"r": register("x", "y")}), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
