"""Labels: Label Studio annotations turned into preference rows, exactly once, and their statistics.

No Label Studio client code here (that is annotation/): only the data an annotation carries.
"""
