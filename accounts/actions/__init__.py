"""State changes of accounts: one function per change, atomic, validating, its audit event written last in the same transaction (Zulip's zerver/actions). services.py keeps rules and reads."""
