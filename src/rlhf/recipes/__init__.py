"""Recipes: one readable file per algorithm, each composing the shared components."""
