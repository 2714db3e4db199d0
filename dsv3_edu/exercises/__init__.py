"""Exercise checkers: each explains what is wrong, not just False. Solutions live in solutions.py."""
