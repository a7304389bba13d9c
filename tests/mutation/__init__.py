"""Mutation testing of the rules (``lua/``) and of the argument planning: ``make mutants``."""
