"""Staged rollouts: the pure state machine and the operations on stored rollouts.
"""
