"""Exercise checkers: each explains what is wrong, not just False.

Solutions sit next to their checkers as solution_* functions.
"""
