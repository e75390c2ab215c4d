"""Data: typed feedback records, readers, conversions, tokenisation, collation and packing."""
