//! The `vmdk-file` integration suite: one binary.

mod concurrency;
mod power_loss;
