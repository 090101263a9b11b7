"""Reading pkg repositories: archives, catalogues, signatures, sums."""
