"""The ground: errors, dtypes and the plain values that cross every boundary. Imports nothing of ours."""
