"""State changes of agents: one function per change, atomic, validating, its audit event written last in the same transaction. services and runner keep rules and reads."""
