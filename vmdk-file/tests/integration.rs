//! The `vmdk-file` integration suite: one binary.

mod concurrency;
mod ordered;
mod power_loss;
