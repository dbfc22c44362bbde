"""Simulated devices: thousands of paho clients speaking the real protocol with synthetic numbers.
"""
