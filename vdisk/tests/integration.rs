//! The `vdisk` integration suite: one binary (see `support/`).

mod support;

mod write;

mod chain;
mod check;
mod edge;
mod formats;
mod guest;
mod malformed;
mod oracle;
mod peers;
mod repo;
mod serve;
mod sim_cli;
