"""Task families: synthetic 2-D tasks (Section 4.1); image tasks come with the image issue."""
