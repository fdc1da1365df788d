//! The `vdisk` integration suite: one binary (see `support/`).

mod support;

mod chain;
mod edge;
mod formats;
mod malformed;
mod oracle;
