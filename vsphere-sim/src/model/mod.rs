//! The simulated inventory and what each SOAP call does to it.
//!
//! [`Shared`] holds the model; [`Shared::handle`] dispatches each SOAP
//! call to the module that implements it.

mod changed_areas;
mod dispatch;
mod luns;
mod properties;
mod reconfig;
mod snapshots;
mod state;

pub use dispatch::Outcome;
pub use state::{Fault, NfcGrant, Shared, SimOptions, DEFAULT_CBT_BLOCK};
