"""Small helpers shared by several parts of the package."""
