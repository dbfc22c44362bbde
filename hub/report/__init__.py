"""The fleet report: a self-contained HTML page with charts.
"""
