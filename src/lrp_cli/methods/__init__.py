"""Explanation methods other than LRP, on the same IR and backward machinery."""
