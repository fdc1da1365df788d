//! Consistency checks over loaded metadata.
