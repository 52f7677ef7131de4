"""State changes of billing: one function per change, atomic, validating, its audit event written last in the same transaction. services.py keeps rules and reads."""
