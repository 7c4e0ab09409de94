"""Data stage: sources -> one standard table per dataset -> memory-mappable image stores -> task tables."""
